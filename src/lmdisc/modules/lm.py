"""LanguageModel: wires an LM nn.Module, a loss and an optimiser into truncated-BPTT training."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch

from lmdisc.losses.base import BatchContext, Loss, token_nll
from lmdisc.metrics import TokenNLL
from lmdisc.models.base import LanguageModelBase, detach_state


class LanguageModel(L.LightningModule):
    """Trains `model` on stream batches with the recurrent state carried across windows.

    Lightning 2 has no built-in TBPTT, so the state lives here: one per stage, reset at the
    start of each epoch, detached after every training window. With `scale_lr_by_window`
    (AWD's variable BPTT) each step's learning rate is scaled by window length / `bptt`.
    """

    def __init__(
        self,
        model: LanguageModelBase,
        loss: Loss,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        scheduler_interval: str = "epoch",
        scheduler_monitor: str = "val/loss",
        bptt: int = 35,
        scale_lr_by_window: bool = False,
        vocab: list[str] | None = None,
        run_config: dict | None = None,
    ):
        super().__init__()
        self.model = model
        self.loss_fn = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        self.scheduler_monitor = scheduler_monitor
        self.bptt = bptt
        self.scale_lr_by_window = scale_lr_by_window
        self.vocab = list(vocab or [])
        self.run_config = run_config or {}
        self.train_nll = TokenNLL()
        self.val_nll = TokenNLL()
        self.test_nll = TokenNLL()
        self._state: dict[str, Any] = {"train": None, "val": None, "test": None}
        self._window_len = bptt
        self.tokens_seen = 0  # input tokens of this process' training windows, for throughput

    def forward(self, tokens: torch.Tensor, state=None):
        return self.model(tokens, state)

    # ---- training -------------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        self._state["train"] = None

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        inputs, targets = batch
        self._window_len = inputs.shape[1]
        self.tokens_seen += inputs.numel()
        logits, state, extras = self.model(inputs, self._state["train"])
        self._state["train"] = detach_state(state)
        ctx = BatchContext(inputs=inputs, state=state, extras=extras)
        out = self.loss_fn(logits, targets, ctx)
        loss = out.loss
        penalty = self.model.regularization_loss(extras)
        if penalty is not None:
            loss = loss + penalty
            out.logs["regularization"] = penalty.detach()
        self.train_nll.update(ctx.token_nll(logits, targets), targets)
        self.log("train/objective", loss.detach(), prog_bar=True)
        self.log_dict({f"train/{k}": v for k, v in out.logs.items()})
        return loss

    def on_train_epoch_end(self) -> None:
        self._log_split("train", self.train_nll)

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        scale = self._window_len / self.bptt if self.scale_lr_by_window else 1.0
        base_lrs = [group["lr"] for group in optimizer.param_groups]
        if scale != 1.0:
            for group in optimizer.param_groups:
                group["lr"] = group["lr"] * scale
        try:
            optimizer.step(closure=optimizer_closure)
        finally:
            for group, lr in zip(optimizer.param_groups, base_lrs):
                group["lr"] = lr

    # ---- evaluation -----------------------------------------------------------------------
    def _eval_step(self, stage: str, metric: TokenNLL, batch) -> None:
        inputs, targets = batch
        logits, state, _ = self.model(inputs, self._state[stage])
        self._state[stage] = state
        metric.update(token_nll(logits, targets), targets)

    def _log_split(self, stage: str, metric: TokenNLL) -> None:
        nll = metric.compute()
        self.log(f"{stage}/loss", nll.float(), prog_bar=False)
        self.log(f"{stage}/ppl", nll.exp().float(), prog_bar=stage == "val")
        metric.reset()

    def on_validation_epoch_start(self) -> None:
        self._state["val"] = None

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step("val", self.val_nll, batch)

    def on_validation_epoch_end(self) -> None:
        self._log_split("val", self.val_nll)

    def on_test_epoch_start(self) -> None:
        self._state["test"] = None

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step("test", self.test_nll, batch)

    def on_test_epoch_end(self) -> None:
        self._log_split("test", self.test_nll)

    # ---- optimisation and checkpoints -----------------------------------------------------
    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=self.model.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = {
            "scheduler": self.scheduler_factory(optimizer),
            "interval": self.scheduler_interval,
            "monitor": self.scheduler_monitor,
        }
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["lmdisc"] = {"vocab": self.vocab, "config": self.run_config}
