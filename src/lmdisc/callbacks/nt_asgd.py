"""NT-ASGD (Merity et al. 2017): plain SGD until validation stalls, then average the iterates."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info


class NTASGD(Callback):
    """Non-monotonically triggered averaging.

    Averaged SGD with a constant learning rate is SGD plus a running mean of the weights, so
    rather than swapping optimisers mid-run (which breaks resuming) this keeps the optimiser and
    maintains the mean itself. It triggers when the monitored loss is worse than the best of all
    but the last `nonmono` evaluations (AWD's rule), evaluates with the averaged weights, and
    saves them as `averaged_state_dict` in checkpoints (evaluation and `init_from` prefer them).
    """

    def __init__(self, nonmono: int = 5, monitor: str = "val/loss"):
        if nonmono < 1:
            raise ValueError(f"nonmono must be >= 1, got {nonmono}")
        self.nonmono = nonmono
        self.monitor = monitor
        self.history: list[float] = []
        self.n_averaged = 0
        self.averaged: dict[str, torch.Tensor] | None = None
        self._backup: dict[str, torch.Tensor] | None = None

    @property
    def triggered(self) -> bool:
        return self.averaged is not None

    def _params(self, pl_module: L.LightningModule) -> dict[str, torch.nn.Parameter]:
        return dict(pl_module.model.named_parameters())

    def _to_device(self, pl_module) -> None:
        """Checkpoints restore tensors where they were saved (cuda:0 on every DDP rank)."""
        if self.averaged:
            params = self._params(pl_module)
            self.averaged = {n: t.to(params[n].device) for n, t in self.averaged.items()}

    def on_train_start(self, trainer, pl_module) -> None:
        self._to_device(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.triggered:
            return
        self.n_averaged += 1
        with torch.no_grad():
            for name, param in self._params(pl_module).items():
                avg = self.averaged[name]
                avg.add_(param.detach() - avg, alpha=1.0 / self.n_averaged)

    def _swap_in(self, pl_module) -> None:
        if self.triggered and self.n_averaged > 0 and self._backup is None:
            params = self._params(pl_module)
            self._backup = {n: p.detach().clone() for n, p in params.items()}
            with torch.no_grad():
                for name, param in params.items():
                    param.copy_(self.averaged[name])

    def _swap_out(self, pl_module) -> None:
        if self._backup is not None:
            with torch.no_grad():
                for name, param in self._params(pl_module).items():
                    param.copy_(self._backup[name])
            self._backup = None

    def on_validation_start(self, trainer, pl_module) -> None:
        self._to_device(pl_module)
        self._swap_in(pl_module)

    def on_validation_end(self, trainer, pl_module) -> None:
        self._swap_out(pl_module)
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.monitor])
        if (
            not self.triggered
            and len(self.history) > self.nonmono
            and value > min(self.history[: -self.nonmono])
        ):
            # validation runs under inference mode; the average is updated in training, outside it
            with torch.inference_mode(False):
                self.averaged = {n: p.detach().clone() for n, p in self._params(pl_module).items()}
            self.n_averaged = 1
            rank_zero_info(f"NT-ASGD: averaging weights from epoch {trainer.current_epoch}")
        self.history.append(value)

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history), "n_averaged": self.n_averaged}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict["history"])
        self.n_averaged = int(state_dict["n_averaged"])

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if self.triggered:
            checkpoint["averaged_state_dict"] = {n: t.clone() for n, t in self.averaged.items()}

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        averaged = checkpoint.get("averaged_state_dict")
        self.averaged = {n: t.clone() for n, t in averaged.items()} if averaged else None
