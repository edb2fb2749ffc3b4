"""LanguageModel: wires an LM nn.Module, a loss and an optimiser into training on windows."""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from lmdisc.data.window import Window
from lmdisc.errors import LmdiscError
from lmdisc.finetune import FinetunePlan, lora_state, optimizer_groups
from lmdisc.losses.base import BatchContext, Loss
from lmdisc.metrics import SplitMetrics, TokenNLL
from lmdisc.mfu import flops_per_token, peak_flops
from lmdisc.models.base import LanguageModelBase
from lmdisc.resume import gather_from_ranks, move_state, restore_rng, rng_state, this_ranks
from lmdisc.wandb_tracking import wandb_loggers
from lmdisc.window_loop import Reader

EVAL_STAGES = ("val", "train_eval")


class LanguageModel(L.LightningModule):
    """Trains `model` on the windows of a protocol: stream windows with the recurrent state carried
    (`carry_state`), or independent transformer blocks.

    Lightning 2 has no built-in TBPTT, so the state lives in one `Reader` per stage, reset at the
    start of each epoch and detached after every training window. With `scale_lr_by_window`
    (AWD's variable BPTT) each step's learning rate is scaled by window length / `bptt`. With
    `ce_chunk_size` and a loss that can work from the features (cross-entropy, the perplexity
    losses, CE + rKL), the loss is computed in chunks of that many positions from the model's
    features (no [B, T, V] logits).
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
        checkpoint_meta: dict | None = None,
        carry_state: bool | None = None,
        ce_chunk_size: int | None = None,
        finetune_plan: FinetunePlan | None = None,
        layer_decay: float = 1.0,
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
        self.checkpoint_meta = checkpoint_meta or {}
        self.finetune_plan = finetune_plan
        self.layer_decay = layer_decay
        # a LoRA run's checkpoints hold the adapters alone: resuming loads them into the base
        self.strict_loading = not (finetune_plan is not None and finetune_plan.adapters_only)
        carry = model.carries_state if carry_state is None else carry_state
        self.readers = {stage: Reader(model, carry) for stage in ("train", *EVAL_STAGES)}
        self.chunk_size = ce_chunk_size or 0
        if self.chunk_size and (getattr(loss, "needs_logits", True) or model.output_layer() is None):
            why = (
                "this loss needs the logits"
                if getattr(loss, "needs_logits", True)
                else "the output is not linear"
            )
            rank_zero_info(f"ce_chunk_size={self.chunk_size} is not used: {why} (all logits at once)")
            self.chunk_size = 0
        self.train_nll = TokenNLL()
        self.eval_metrics = nn.ModuleDict({stage: SplitMetrics() for stage in EVAL_STAGES})
        self._window_len = bptt
        self.tokens_seen = 0  # input tokens of this process' training windows, for throughput
        self._rate_since: tuple[float, int] | None = None  # (time, tokens_seen) at the last logged step
        self._resumed: dict | None = None  # this process's state from a checkpoint, until the next step

    def forward(self, tokens: torch.Tensor, state=None):
        return self.model(tokens, state)

    def configure_model(self) -> None:
        """trainer=fsdp: shard the LM (its units, then itself: lmdisc.sharding); once. train.py has
        checked the run can be sharded (`check_fsdp_run`) before any process started."""
        from lmdisc.sharding import is_fsdp, shard_language_model

        if self._trainer is None or not is_fsdp(self.trainer.strategy) or getattr(self, "_sharded", False):
            return
        shard_language_model(self.model, self.trainer.strategy.device_mesh["data_parallel"])
        self._sharded = True

    # ---- training -------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(self.loss_fn, "bind_corpus"):
            self.loss_fn.bind_corpus(datamodule.load())

    def on_train_epoch_start(self) -> None:
        """(Not called when a run resumes mid-epoch.) A new epoch starts without carried state or sums,
        also after resuming from an epoch end: only the RNG streams are restored then."""
        self.readers["train"].reset()
        if self._resumed is not None:
            self._resumed = {"rng": self._resumed["rng"]}

    def on_train_batch_start(self, batch: Window, batch_idx: int) -> None:
        """First step after a resume: the RNG streams, the carried state and the epoch's training sums
        as they were when the checkpoint was saved (`lmdisc.resume`); Lightning itself restored the
        rest and the data module skipped the batches already done."""
        if self._resumed is None:
            return
        resumed, self._resumed = self._resumed, None
        restore_rng(resumed["rng"])
        if "reader" not in resumed:  # saved between epochs: this one starts afresh (Lightning may
            self.readers["train"].reset()  # not call on_train_epoch_start after such a resume)
            self.train_nll.reset()
            return
        self.readers["train"].state = move_state(resumed["reader"], self.device)
        for name, value in resumed["train_nll"].items():
            setattr(self.train_nll, name, value.to(self.device))

    def training_step(self, batch: Window, batch_idx: int) -> torch.Tensor:
        inputs, targets = batch.inputs, batch.targets
        self._window_len = inputs.shape[1]
        self.tokens_seen += inputs.numel()
        reader = self.readers["train"]
        first_window = reader.first_window
        logged = self._logs_kept()
        ctx = BatchContext(inputs=inputs, first_window=first_window, diagnostics=logged)
        if self.chunk_size:
            features, ctx.extras = reader(inputs, self.model.features)
            ctx.features, ctx.output_layer, ctx.chunk_size = (
                features,
                self.model.output_layer(),
                self.chunk_size,
            )
            logits = None
        else:
            logits, ctx.extras = reader(inputs)
        ctx.state = reader.state
        out = self.loss_fn(logits, targets, ctx)
        loss = out.loss
        penalty = self.model.regularization_loss(ctx.extras)
        if penalty is not None:
            loss = loss + penalty
            out.logs["regularization"] = penalty.detach()
        if not torch.isfinite(loss):  # one scalar read a step: a NaN would otherwise surface in a metric
            raise LmdiscError(self._non_finite_message(loss, inputs))
        self.train_nll.update(ctx.token_nll(logits, targets), targets, batch.words)
        if logged:  # self.log costs as much as a small model's step: only where Lightning writes it
            self.log("train/objective", loss.detach(), prog_bar=True)
            self.log_dict({f"train/{k}": v for k, v in out.logs.items()})
            self._log_tokens_per_s()
        return loss

    def _log_tokens_per_s(self) -> None:
        """Training tokens a second over all processes, since the previous logged step (the first
        logged step only starts the clock)."""
        now = time.perf_counter()
        if self._rate_since is not None and now > self._rate_since[0]:
            since, tokens = self._rate_since
            world = self.trainer.world_size if self._trainer is not None else 1
            rate = (self.tokens_seen - tokens) * world / (now - since)
            self.log("train/tokens_per_s", rate)
            peak = peak_flops(self.device)
            if peak is not None:  # GPUs with a known peak (lmdisc.mfu)
                self.log("train/mfu", rate * flops_per_token(self.model, self._window_len) / (peak * world))
        self._rate_since = (now, self.tokens_seen)

    def _non_finite_message(self, loss: torch.Tensor, inputs: torch.Tensor) -> str:
        """Where training diverged, what it was reading, and where to go back to."""
        first = inputs[0, :12].tolist()
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        tokenizer = getattr(datamodule, "tokenizer", None)
        text = repr(tokenizer.decode(first)) if tokenizer is not None else str(first)
        saved = [
            c.last_model_path or c.best_model_path
            for c in (self.trainer.checkpoint_callbacks if self._trainer is not None else [])
            if c.last_model_path or c.best_model_path
        ]
        where = (
            f"last good checkpoint: {saved[0]} (ckpt_path= resumes from it)"
            if saved
            else "no checkpoint saved yet"
        )
        return (
            f"the training loss is {loss.item()} at step {self.global_step} (epoch {self.current_epoch}); the batch "
            f"starts with {text}; {where}. Lower optim.optimizer.lr, or clip gradients (trainer.gradient_clip_val)"
        )

    def on_before_optimizer_step(self, optimizer) -> None:
        """The gradient norm before clipping (all processes' gradients, after DDP's reduction), on
        the steps whose logs Lightning writes."""
        if not self._logs_kept():
            return
        grads = [p.grad.detach() for p in self.model.parameters() if p.grad is not None]
        if grads:
            norms = [torch.linalg.vector_norm(g.float()) for g in grads]
            # FSDP: each norm is a DTensor over the shards; full_tensor() reduces it to the whole one
            norms = [n.full_tensor() if hasattr(n, "full_tensor") else n for n in norms]
            self.log("train/grad_norm", torch.linalg.vector_norm(torch.stack(norms)))

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
        word_nll = self.train_nll.word_loss().float()
        self.train_nll.reset()
        # the metric is already summed over processes: sync_dist's mean of equal values leaves it
        # as it is, and tells Lightning that the value is the whole run's
        self.log("train/loss", nll, sync_dist=True)
        self.log("train/ppl", nll.exp(), sync_dist=True)
        self.log("train/word_ppl", word_nll.exp(), sync_dist=True)

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

    # ---- validation -----------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        for stage in EVAL_STAGES:
            self.readers[stage].reset()

    def validation_step(self, batch: Window, batch_idx: int, dataloader_idx: int = 0) -> None:
        # dataloader 1, when configured (data.train_eval_tokens), is a fixed slice of train
        stage = "train_eval" if dataloader_idx == 1 else "val"
        logits, _ = self.readers[stage](batch.inputs)
        self.eval_metrics[stage].update(logits, batch)

    def _log_eval(self, stage: str) -> dict[str, torch.Tensor]:
        values = {k: v.float() for k, v in self.eval_metrics[stage].compute().items()}
        self.eval_metrics[stage].reset()
        for name, value in values.items():
            # token-weighted over every process already (see on_train_epoch_end for sync_dist)
            self.log(f"{stage}/{name}", value, prog_bar=stage == "val" and name == "ppl", sync_dist=True)
        return values

    def on_validation_epoch_end(self) -> None:
        val = self._log_eval("val")
        if self.eval_metrics["train_eval"].nll.tokens > 0:
            train = self._log_eval("train_eval")
            self.log("gap/ppl", val["ppl"] - train["ppl"], sync_dist=True)

    # ---- optimisation and checkpoints -----------------------------------------------------
    def configure_optimizers(self):
        lr = getattr(self.optimizer_factory, "keywords", {}).get("lr")
        layers = self.finetune_plan.layers if self.finetune_plan is not None else None
        groups = (
            optimizer_groups(self.model, self.layer_decay, lr, layers)
            if self.layer_decay != 1
            else self.model.parameter_groups()
        )
        optimizer = self.optimizer_factory(params=groups)
        if self.scheduler_factory is None:
            return optimizer
        extra = {}
        if "total_steps" in inspect.signature(self.scheduler_factory).parameters:
            extra["total_steps"] = int(self.trainer.estimated_stepping_batches)  # optimiser steps of the run
        scheduler = {
            "scheduler": self.scheduler_factory(optimizer, **extra),
            "interval": self.scheduler_interval,
            "monitor": self.scheduler_monitor,
        }
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["lmdisc"] = {"kind": "lm", **self.checkpoint_meta}
        plan = self.finetune_plan
        if plan is not None and (plan.mode != "full" or plan.meta.get("untied_head")):
            checkpoint["lmdisc"]["finetune"] = plan.meta
        if plan is not None and plan.adapters_only:  # the base is rebuilt from where it came from
            checkpoint["state_dict"] = lora_state(checkpoint["state_dict"])
        # every process's RNG and, mid-epoch, its carried state and epoch sums: an exact resume
        entry = {"rng": rng_state()}
        done = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
        if 0 < done < self.trainer.num_training_batches:
            entry["reader"] = move_state(self.readers["train"].state, "cpu")
            entry["train_nll"] = {k: v.detach().cpu() for k, v in self.train_nll.metric_state.items()}
        checkpoint["lmdisc"]["resume"] = gather_from_ranks(entry)
        run_ids = [logger.version for logger in wandb_loggers(self.loggers) if logger.version]
        if run_ids:  # ckpt_path= resumes this W&B run (lmdisc.wandb_tracking)
            checkpoint["lmdisc"]["wandb_run_id"] = str(run_ids[0])

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._resumed = this_ranks((checkpoint.get("lmdisc") or {}).get("resume"))
