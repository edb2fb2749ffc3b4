"""Progress for output that is not a terminal: a plain line every so often instead of a live bar.

A live bar written to a file (a pipeline stage's log, nohup, a SLURM job) shows nothing until the
epoch ends, and a 20-minute epoch then looks hung. These lines say how far it got and how fast.
"""

from __future__ import annotations

import math
import sys
import time

import torch
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar


def progress_bar(every_s: float = 60.0) -> ProgressBar:
    """A live bar on a terminal, a `TextProgressBar` when stdout is a file or a pipe."""
    return RichProgressBar() if sys.stdout.isatty() else TextProgressBar(every_s=every_s)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _format_metric(value) -> str:
    if isinstance(value, torch.Tensor):
        value = value.item()
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class TextProgressBar(ProgressBar):
    """One line every `every_s` seconds of training (batches, training tokens/s, time left in the
    epoch, the progress-bar metrics), one after each validation and one at each epoch's end."""

    def __init__(self, every_s: float = 60.0):
        super().__init__()
        if not math.isfinite(every_s) or every_s < 0:
            raise ValueError(f"every_s must be a finite number >= 0, got {every_s!r}")
        self.every_s = every_s
        self._enabled = True
        self._epoch_start = self._last_line = self._val_start = 0.0
        self._val_seconds = 0.0  # validation inside this epoch, left out of tokens/s
        self._tokens = self._batches = 0  # seen by this process in this epoch

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _metrics(self, trainer, pl_module, prefix: str) -> str:
        metrics = self.get_metrics(trainer, pl_module)
        return " · ".join(f"{k} {_format_metric(v)}" for k, v in metrics.items() if k.startswith(prefix))

    def _epoch_label(self, trainer) -> str:
        total = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else "?"
        return f"epoch {trainer.current_epoch + 1}/{total}"

    def _start_counting(self) -> None:
        self._epoch_start = self._last_line = time.monotonic()
        self._val_seconds = 0.0
        self._tokens = self._batches = 0

    # a run resumed mid-epoch gets no epoch start: it counts from its own start
    def on_train_start(self, trainer, pl_module) -> None:
        self._start_counting()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start_counting()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
        if isinstance(inputs, torch.Tensor):
            self._tokens += inputs.numel()
        self._batches += 1
        now = time.monotonic()
        if not self._enabled or now - self._last_line < self.every_s:
            return
        self._last_line = now
        done, total = batch_idx + 1, self.total_train_batches
        elapsed = max(now - self._epoch_start, 1e-9)
        of_total = f"/{total:,}" if math.isfinite(total) else ""
        parts = [f"{self._epoch_label(trainer)}: batch {done:,}{of_total}"]
        if math.isfinite(total) and total > 0:
            parts[0] += f" ({100 * done / total:.1f}%)"
            parts.append(
                f"{_duration(elapsed)} elapsed, ~{_duration(elapsed / self._batches * (total - done))} left"
            )
        if self._tokens:
            parts.append(f"{self._tokens / max(elapsed - self._val_seconds, 1e-9):,.0f} tok/s")
        metrics = self._metrics(trainer, pl_module, "train/")
        self.print(" · ".join(parts + ([metrics] if metrics else [])), flush=True)

    def on_validation_start(self, trainer, pl_module) -> None:
        self._val_start = time.monotonic()

    def on_validation_end(self, trainer, pl_module) -> None:
        self._val_seconds += time.monotonic() - self._val_start
        if self._enabled and not trainer.sanity_checking:
            metrics = self._metrics(trainer, pl_module, "val/")
            # trainer.validate() outside fit (re-validating a best checkpoint) belongs to no epoch
            where = f"{self._epoch_label(trainer)}: " if trainer.state.fn == "fit" else ""
            self.print(f"{where}validation · {metrics or 'done'}", flush=True)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self._enabled:
            took = _duration(time.monotonic() - self._epoch_start)
            self.print(f"{self._epoch_label(trainer)}: finished in {took}", flush=True)
