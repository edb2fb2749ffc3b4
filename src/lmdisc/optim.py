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
