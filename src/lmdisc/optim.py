"""Learning-rate schedules that torch does not ship as one object."""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


class _DelayedDecay:
    """Picklable lr multiplier: 1 for `start_epoch` epochs, then `gamma` per further epoch."""

    def __init__(self, start_epoch: int, gamma: float):
        self.start_epoch = start_epoch
        self.gamma = gamma

    def __call__(self, epoch: int) -> float:
        return self.gamma ** max(0, epoch - self.start_epoch + 1)


def delayed_exponential_decay(optimizer: Optimizer, start_epoch: int = 4, gamma: float = 0.5) -> LambdaLR:
    """Zaremba et al.'s schedule: constant for `start_epoch` epochs, then multiplied by `gamma` each epoch."""
    if start_epoch < 0 or not 0 < gamma <= 1:
        raise ValueError(f"need start_epoch >= 0 and 0 < gamma <= 1, got {start_epoch}, {gamma}")
    return LambdaLR(optimizer, _DelayedDecay(start_epoch, gamma))


WARMUP_KINDS = ("linear", "cosine")


def warmup_schedule(optimizer: Optimizer, total_steps: int, kind: str = "linear", warmup_steps: int = 100):
    """transformers' warmup schedules (the curves of its Trainer), stepped per optimiser step:
    the rate rises linearly from 0 over `warmup_steps`, then decays to 0 at `total_steps`, linearly
    or along a half cosine. Each parameter group keeps its own rate (layer-wise decay)."""
    from lmdisc.errors import LmdiscError

    if kind not in WARMUP_KINDS:
        raise LmdiscError(f"scheduler.kind must be one of {list(WARMUP_KINDS)}, got {kind!r}")
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise LmdiscError(f"scheduler.warmup_steps must be a whole number >= 0, got {warmup_steps!r}")
    if warmup_steps >= total_steps:
        raise LmdiscError(
            f"scheduler.warmup_steps={warmup_steps} is not shorter than the run ({total_steps} optimiser steps): "
            "lower it, or train longer (trainer.max_steps / max_epochs)"
        )
    try:
        from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup
    except ImportError:
        raise LmdiscError("scheduler=warmup_* uses transformers' schedules: pip install -e '.[hf]'") from None
    build = get_linear_schedule_with_warmup if kind == "linear" else get_cosine_schedule_with_warmup
    return build(optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps)
