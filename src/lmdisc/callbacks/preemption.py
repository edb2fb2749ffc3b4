"""Stop at the next step boundary on SIGTERM, SIGINT or SIGUSR1, save a checkpoint, exit cleanly.

A preempted job (SLURM, Kubernetes, a spot instance) gets SIGTERM and some seconds of grace; Ctrl+C
sends SIGINT. Lightning's own answer to SIGTERM raises at the end of a step and saves nothing, and
Ctrl+C can land mid-step, where weights and optimiser may disagree. This callback only records the
signal; at the end of the step the processes agree (any one signalled stops them all), save
`last.ckpt`, which `ckpt_path=` resumes exactly (`lmdisc.resume`), and the run exits with status
128 + the signal's number and one line saying where it stopped. In a SLURM job Lightning's
auto-requeue handles SIGUSR1 first (it saves hpc_ckpt_<n>.ckpt and requeues the job): this callback
then leaves SIGUSR1 to it.
"""

from __future__ import annotations

import signal
from pathlib import Path

import lightning as L

from lmdisc.errors import LmdiscError

SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1")


class Preempted(LmdiscError):
    """Training stopped by a signal after saving its checkpoint; the exit status is 128 + signal."""

    def __init__(self, signum: int, step: int, path: str):
        self.exit_code = 128 + signum
        name = signal.Signals(signum).name
        super().__init__(
            f"{name} received: stopped after step {step} and saved {path}; "
            f"resume exactly where it stopped with ckpt_path={path}"
        )


class SaveOnSignal(L.Callback):
    def __init__(self, dirpath: str, filename: str = "last"):
        self.path = str(Path(dirpath) / f"{filename}.ckpt")
        self.received: int | None = None  # the signal this process got
        self._stopping: int | None = None  # the signal all processes agreed to stop on
        self._saved = False  # last.ckpt written for it: stop at the next hook
        self._previous: dict[int, object] = {}

    def _record(self, signum, frame) -> None:
        self.received = signum

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for name in SIGNALS:
            if not hasattr(signal, name):
                continue
            signum = getattr(signal, name)
            if name == "SIGUSR1" and signal.getsignal(signum) not in (signal.SIG_DFL, signal.SIG_IGN, None):
                continue  # already handled: Lightning's SLURM auto-requeue saves and requeues on it
            self._previous[signum] = signal.signal(signum, self._record)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        local = self.received is not None
        if not trainer.strategy.reduce_boolean_decision(local, all=False):
            return
        self._stopping = int(self.received if local else signal.SIGTERM)  # another process got it
        # mid-epoch: save now, and stop at the next hook, once Lightning has logged this step. After
        # an epoch's last batch, let the epoch end run (validation, metrics), save there and stop
        # before the next epoch: Lightning resumes a checkpoint of an epoch's last batch in a state
        # that skips both that epoch's end and the next one's start
        if not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            trainer.save_checkpoint(self.path, weights_only=False)  # a full one, to resume from
            self._saved = True

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        if self._stopping is not None and not self._saved:
            trainer.save_checkpoint(self.path, weights_only=False)  # a full one, to resume from
            self._saved = True

    # the first hook after a save: the next batch, a validation due after this step, or the end
    def on_train_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx) -> None:
        if self._saved:
            self._stop(trainer)

    def on_validation_start(self, trainer: L.Trainer, pl_module) -> None:
        if self._saved:
            self._stop(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module) -> None:
        if self._saved:
            self._stop(trainer)

    def _stop(self, trainer: L.Trainer) -> None:
        self._saved = False
        self._restore_handlers()
        for logger in trainer.loggers:  # the steps logged since the last flush (a CSV buffers them)
            logger.save()
        raise Preempted(self._stopping, trainer.global_step, self.path)

    def _restore_handlers(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._restore_handlers()

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._restore_handlers()
