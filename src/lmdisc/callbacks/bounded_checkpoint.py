"""A ModelCheckpoint that never saves a model whose monitored value is not better than a bound."""

from __future__ import annotations

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info


class BoundedCheckpoint(ModelCheckpoint):
    """Keeps the best checkpoint only while it beats `bound` (mode=min: strictly below it).

    The discriminator uses it with bound 2·ln 2, the BCE of the zero-initialised head: a
    discriminator worse than "know nothing" would only add noise to fine-tuning.
    """

    def __init__(self, bound: float, **kwargs):
        super().__init__(**kwargs)
        self.bound = bound

    def check_monitor_top_k(self, trainer, current=None) -> bool:
        if current is not None:
            value = float(current)
            worse = value >= self.bound if self.mode == "min" else value <= self.bound
            if worse:
                rank_zero_info(f"{self.monitor}={value:.4f} does not beat {self.bound:.4f}: not saved")
                return False
        return super().check_monitor_top_k(trainer, current)
