"""`loss.refresh_every_n_epochs` (beyond the paper): every n epochs of rkl_disc fine-tuning, reset
q_0 to the current model and re-train the discriminator against it, so the estimate tracks
KL(q_θ‖p) rather than a q_0 that fine-tuning has already left behind.
"""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

from lmdisc.config import instantiate
from lmdisc.errors import LmdiscError
from lmdisc.losses.discriminator import discriminator_bce
from lmdisc.losses.reverse_kl import ReverseKLLoss
from lmdisc.models.discriminator import LMBodyEncoder
from lmdisc.window_loop import Reader, read_windows


def find_reverse_kl(loss) -> ReverseKLLoss | None:
    terms = getattr(loss, "terms", {"": (1.0, loss)})
    return next((fn for _, fn in terms.values() if isinstance(fn, ReverseKLLoss)), None)


def training_recipe(run: dict, lr: float | None = None) -> tuple[Callable, Callable]:
    """How the discriminator was trained, from its checkpoint's config (train_disc.py's): an
    optimiser factory, at `lr` if given, and its gradient clipping. Built when fine-tuning starts,
    so a recipe that cannot work fails then, not at the first refresh an epoch later."""
    optimizer_cfg = dict((run.get("optim") or {}).get("optimizer") or {})
    if "_target_" not in optimizer_cfg:
        raise LmdiscError(
            "the discriminator checkpoint does not record its optimiser (optim.optimizer._target_); "
            "re-train it with train_disc.py to refresh it"
        )
    optimizer_cfg["_partial_"] = True
    if lr is not None:
        optimizer_cfg["lr"] = lr
    try:
        factory = instantiate(optimizer_cfg)
    except Exception as err:  # hydra wraps import and argument errors alike
        raise LmdiscError(
            f"cannot build the discriminator's optimiser {optimizer_cfg['_target_']}: {err}"
        ) from None
    trainer = run.get("trainer") or {}
    value, algorithm = trainer.get("gradient_clip_val"), trainer.get("gradient_clip_algorithm") or "norm"
    if algorithm not in ("norm", "value"):
        raise LmdiscError(f"unknown gradient_clip_algorithm {algorithm!r} in the discriminator checkpoint")
    clip_fn = torch.nn.utils.clip_grad_norm_ if algorithm == "norm" else torch.nn.utils.clip_grad_value_

    def clip(params) -> None:
        if value:
            clip_fn(params, value)

    return factory, clip


def retrain_discriminator(
    rkl: ReverseKLLoss,
    loader,
    epochs: int,
    device: torch.device,
    recipe: tuple[Callable, Callable],
    carry_state: bool = True,
) -> float:
    """The discriminator's BCE against the (new) q_0, warm-started, trained by `recipe`
    (`training_recipe`) over the windows of `loader`; returns the last epoch's mean BCE."""
    disc, lm = rkl.discriminator, rkl.reference.to(device).eval()
    cfg = rkl.discriminator_run_config.get("discriminator", {})
    disc.to(device).train().requires_grad_(True)
    encoder = disc.encoder
    if isinstance(encoder, LMBodyEncoder) and not encoder.trainable:
        encoder.body.requires_grad_(False)
    params = [p for p in disc.parameters() if p.requires_grad]
    make_optimizer, clip = recipe
    optimizer = make_optimizer(params=params)
    total = count = 0.0
    lm_reader, disc_reader = Reader(lm, carry_state), Reader(disc, carry_state and disc.carries_state)
    for _ in range(epochs):
        total = count = 0.0
        lm_reader.reset()
        disc_reader.reset()
        for window in read_windows(loader, device):
            inputs, targets = window.inputs, window.targets
            with torch.no_grad():
                logits, _ = lm_reader(inputs)
                log_q0 = torch.log_softmax(logits.float(), -1)
            s, _ = disc_reader(inputs)
            loss = discriminator_bce(
                s.float(), targets, log_q0, targets >= 0, cfg.get("negatives", "exact"), cfg.get("k", 8)
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            clip(params)
            optimizer.step()
            total, count = total + loss.detach().item(), count + 1
    disc.eval().requires_grad_(False)
    return total / max(count, 1)


class DiscriminatorRefresh(Callback):
    """After every `every_n_epochs` training epochs (but not the last): q_0 <- θ, re-train s.

    The discriminator re-trains on the text it was first trained on (its checkpoint's
    `train_split`), for `epochs` epochs, with the optimiser, learning rate and clipping it was
    trained with (its checkpoint's config) unless `lr` is given. A frozen-features encoder takes the
    current model's features too. Refreshed q_0 and s live in memory only: a run resumed from a
    checkpoint starts again from the original ones.
    """

    def __init__(self, every_n_epochs: int, epochs: int = 1, lr: float | None = None):
        if every_n_epochs < 1 or epochs < 1 or (lr is not None and lr <= 0):
            raise LmdiscError(
                "loss.refresh_every_n_epochs, loss.refresh_epochs and loss.refresh_lr (if set) must be > 0"
            )
        self.every_n_epochs, self.epochs, self.lr = every_n_epochs, epochs, lr

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        rkl = find_reverse_kl(pl_module.loss_fn)
        if rkl is None or rkl.discriminator is None:
            raise LmdiscError(
                "loss.refresh_every_n_epochs needs loss=rkl_disc with a discriminator checkpoint"
            )
        self._recipe = training_recipe(rkl.discriminator_run_config, self.lr)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if epoch % self.every_n_epochs or epoch >= trainer.max_epochs:
            return
        rkl = find_reverse_kl(pl_module.loss_fn)
        weights = pl_module.model.state_dict()
        rkl.reference.load_state_dict(weights)
        encoder = rkl.discriminator.encoder
        if isinstance(encoder, LMBodyEncoder):
            encoder.body.load_state_dict(weights)
        cfg = rkl.discriminator_run_config.get("discriminator", {})
        datamodule = trainer.datamodule
        loader = datamodule.discriminator_loader(
            cfg.get("train_split", "train"), cfg.get("heldout_fraction", 0.5)
        )
        carry = datamodule.protocol.carries_state
        with torch.enable_grad():
            bce = retrain_discriminator(rkl, loader, self.epochs, pl_module.device, self._recipe, carry)
        pl_module.log("refresh/disc_bce", bce)
        rank_zero_info(
            f"epoch {epoch}: q_0 reset to the current model, discriminator re-trained (train BCE {bce:.4f})"
        )
