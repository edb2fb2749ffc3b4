"""Gradual unfreezing (Howard & Ruder 2018, ULMFiT) as a Lightning callback."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.utilities import rank_zero_info


class GradualUnfreezing(L.Callback):
    """Epoch e trains the top 1 + e // `every_n_epochs` layer groups (head, then blocks from the top,
    then the embeddings) of those `finetune.mode` trains; the rest stay frozen.

    The optimiser holds every parameter the mode trains from the start: a frozen one has no
    gradient, so the optimiser (and its weight decay) leaves it untouched until it thaws.
    Under DDP, pass trainer.strategy=ddp_find_unused_parameters_true (the set of parameters with
    gradients changes between epochs).
    """

    def __init__(self, every_n_epochs: int):
        self.every_n_epochs = every_n_epochs

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        plan = pl_module.finetune_plan
        groups = [[p for p in g if id(p) in plan.trainable_ids] for g in plan.layers.top_down()]
        groups = [g for g in groups if g]
        thawed = min(1 + trainer.current_epoch // self.every_n_epochs, len(groups))
        for index, group in enumerate(groups):
            for param in group:
                param.requires_grad_(index < thawed)
        rank_zero_info(
            f"gradual unfreezing: epoch {trainer.current_epoch} trains the top {thawed} of {len(groups)} layer groups"
        )
        pl_module.log("train/thawed_groups", float(thawed))
