"""LanguageModel: wires an LM nn.Module, a loss and an optimiser into truncated-BPTT training."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import nn

from lmdisc.losses.base import BatchContext, Loss
from lmdisc.metrics import SplitMetrics, TokenNLL
from lmdisc.models.base import LanguageModelBase, detach_state

EVAL_STAGES = ("val", "train_eval", "test")


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
        self.eval_metrics = nn.ModuleDict({stage: SplitMetrics() for stage in EVAL_STAGES})
        self._state: dict[str, Any] = {"train": None, **dict.fromkeys(EVAL_STAGES)}
        self._window_len = bptt
        self.tokens_seen = 0  # input tokens of this process' training windows, for throughput

    def forward(self, tokens: torch.Tensor, state=None):
        return self.model(tokens, state)

    # ---- training -------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(self.loss_fn, "bind_corpus"):
            self.loss_fn.bind_corpus(datamodule.load())

    def on_train_epoch_start(self) -> None:
        self._state["train"] = None

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        inputs, targets = batch
        self._window_len = inputs.shape[1]
        self.tokens_seen += inputs.numel()
        first_window = self._state["train"] is None
        logits, state, extras = self.model(inputs, self._state["train"])
        self._state["train"] = detach_state(state)
        ctx = BatchContext(
            inputs=inputs,
            state=state,
            extras=extras,
            first_window=first_window,
            diagnostics=self._logs_kept(),
        )
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

    def _logs_kept(self) -> bool:
        """Whether Lightning writes this step's logs: after the step it has stepped global_step + 1
        times and writes when that count + 1 is a multiple of log_every_n_steps."""
        trainer = getattr(self, "_trainer", None)
        if trainer is None:
            return True
        every = max(trainer.log_every_n_steps, 1)
        return every == 1 or (self.global_step + 2) % every == 0 or bool(trainer.fast_dev_run)

    def on_train_epoch_end(self) -> None:
        nll = self.train_nll.compute().float()
        self.train_nll.reset()
        self.log("train/loss", nll)
        self.log("train/ppl", nll.exp())

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
    def _eval_step(self, stage: str, batch) -> None:
        inputs, targets = batch
        logits, state, _ = self.model(inputs, self._state[stage])
        self._state[stage] = state
        self.eval_metrics[stage].update(logits, targets)

    def _log_eval(self, stage: str) -> dict[str, torch.Tensor]:
        values = {k: v.float() for k, v in self.eval_metrics[stage].compute().items()}
        self.eval_metrics[stage].reset()
        for name, value in values.items():
            self.log(f"{stage}/{name}", value, prog_bar=stage == "val" and name == "ppl")
        return values

    def on_validation_epoch_start(self) -> None:
        self._state["val"] = self._state["train_eval"] = None

    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        # dataloader 1, when configured (data.train_eval_tokens), is a fixed slice of train
        self._eval_step("train_eval" if dataloader_idx == 1 else "val", batch)

    def on_validation_epoch_end(self) -> None:
        val = self._log_eval("val")
        if self.eval_metrics["train_eval"].nll.tokens > 0:
            train = self._log_eval("train_eval")
            self.log("gap/ppl", val["ppl"] - train["ppl"])

    def on_test_epoch_start(self) -> None:
        self._state["test"] = None

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step("test", batch)

    def on_test_epoch_end(self) -> None:
        self._log_eval("test")

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
