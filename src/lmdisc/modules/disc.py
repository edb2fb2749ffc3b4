"""DiscriminatorModule: trains s_φ against a frozen LM q_0 (DESIGN.md §4)."""

from __future__ import annotations

import math
from collections.abc import Callable

import lightning as L
import torch

from lmdisc.data.window import Window
from lmdisc.losses.discriminator import NEGATIVES, discriminator_bce, discriminator_stats
from lmdisc.window_loop import Reader

ZERO_HEAD_BCE = 2 * math.log(2)


class DiscriminatorModule(L.LightningModule):
    """Binary cross-entropy of true next words against q_0's words, the LM frozen in eval mode.

    The LM is kept outside the module's children (a plain list), so it is in neither the state
    dict, the optimiser, nor DDP's gradient sync; it is moved to the device with the module.
    """

    def __init__(
        self,
        lm: torch.nn.Module,
        discriminator: torch.nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        negatives: str = "exact",
        k: int = 8,
        checkpoint_meta: dict | None = None,
        carry_state: bool | None = None,
    ):
        super().__init__()
        if negatives not in NEGATIVES:
            raise ValueError(f"discriminator.negatives must be one of {NEGATIVES}, got {negatives!r}")
        if k < 1:
            raise ValueError(f"discriminator.k must be >= 1, got {k}")
        self._frozen = [lm.eval().requires_grad_(False)]
        self.discriminator = discriminator
        self.optimizer_factory = optimizer
        self.negatives, self.k = negatives, k
        self.checkpoint_meta = checkpoint_meta or {}
        carry = getattr(lm, "carries_state", True) if carry_state is None else carry_state
        self._readers = {
            stage: (Reader(lm, carry), Reader(discriminator, carry and discriminator.carries_state))
            for stage in ("train", "val")
        }
        self._sums: dict[str, torch.Tensor] = {}

    @property
    def lm(self) -> torch.nn.Module:
        return self._frozen[0]

    def on_fit_start(self) -> None:
        self.lm.to(self.device)

    def on_validation_start(self) -> None:
        self.lm.to(self.device)

    def _forward(self, stage: str, inputs: torch.Tensor):
        lm_reader, disc_reader = self._readers[stage]
        with torch.no_grad():
            self.lm.eval()
            lm_logits, _ = lm_reader(inputs)
            log_q0 = torch.log_softmax(lm_logits.float(), dim=-1)
        s, _ = disc_reader(inputs)
        return s.float(), log_q0

    def _reset(self, stage: str) -> None:
        for reader in self._readers[stage]:
            reader.reset()

    def on_train_epoch_start(self) -> None:
        self._reset("train")

    def training_step(self, batch: Window, batch_idx: int) -> torch.Tensor:
        inputs, targets = batch.inputs, batch.targets
        s, log_q0 = self._forward("train", inputs)
        mask = targets >= 0
        loss = discriminator_bce(s, targets, log_q0, mask, self.negatives, self.k)
        self.log("train/disc_bce", loss.detach(), prog_bar=True)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._reset("val")
        self._sums = {}

    def validation_step(self, batch: Window, batch_idx: int) -> None:
        inputs, targets = batch.inputs, batch.targets
        s, log_q0 = self._forward("val", inputs)
        for name, value in discriminator_stats(s, targets, log_q0, targets >= 0).items():
            self._sums[name] = self._sums.get(name, 0) + value

    def on_validation_epoch_end(self) -> None:
        sums = {
            k: self.all_gather(v).sum() if self.trainer.world_size > 1 else v for k, v in self._sums.items()
        }
        positions = sums.pop("positions").clamp_min(1)
        for name, value in sums.items():
            self.log(
                f"val/disc_{name}" if name != "kl_q0_p" else "val/kl_q0_p",
                (value / positions).float(),
                prog_bar=name == "bce",
            )

    def configure_optimizers(self):
        params = [p for p in self.discriminator.parameters() if p.requires_grad]
        return self.optimizer_factory(params=params)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["lmdisc"] = {"kind": "discriminator", **self.checkpoint_meta}
