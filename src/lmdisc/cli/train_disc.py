"""`python train_disc.py lm_ckpt=PATH`: train a discriminator against a frozen language model
(or, with `disc_ckpt=PATH`, score one already trained)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import lightning as L
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig, OmegaConf

from lmdisc.allocator import keep_freed_memory
from lmdisc.analysis.frequency import token_classes
from lmdisc.callbacks import BoundedCheckpoint
from lmdisc.checkpoint import (
    AtomicCheckpointIO,
    build_model,
    check_discriminator_of,
    datamodule_for_checkpoint,
    load_discriminator,
    load_lm_checkpoint,
    weights_sha256,
)
from lmdisc.config import instantiate
from lmdisc.distributed import use_job_dir_for_ddp_children
from lmdisc.errors import LmdiscError
from lmdisc.io import atomic_write_json
from lmdisc.losses.discriminator import NEGATIVES
from lmdisc.models.discriminator import build_discriminator
from lmdisc.modules.disc import ZERO_HEAD_BCE, DiscriminatorModule
from lmdisc.validation import validate

from . import CONF_DIR
from .common import (
    close_loggers,
    instantiate_callbacks,
    instantiate_loggers,
    run_main,
    save_resolved_config,
)


def _datamodule(cfg: DictConfig, lm_ckpt: dict, disc_cfg: DictConfig):
    # resolve a given data config in its own context (it interpolates paths.data_dir, seed, ...)
    data_cfg = OmegaConf.to_container(cfg.data, resolve=True) if cfg.get("data") else None
    data_cfg = data_cfg or lm_ckpt["lmdisc"].get("config", {}).get("data")
    if not data_cfg:
        raise LmdiscError(
            "the LM checkpoint records no data config; pass data=ptb (or data=text data.path=DIR)"
        )
    data_cfg = OmegaConf.merge(
        OmegaConf.create(OmegaConf.to_container(OmegaConf.create(data_cfg), resolve=True)),
        cfg.get("data_overrides") or {},
    )
    return datamodule_for_checkpoint(
        data_cfg,
        lm_ckpt,
        f"the LM checkpoint {cfg.lm_ckpt}",
        own_config=not cfg.get("data"),
        train_split=disc_cfg.train_split,
        heldout_fraction=disc_cfg.heldout_fraction,
        train_eval_tokens=0,
        noise="none",  # the discriminator reads real text, never a noised LM run's inputs
    )


def _frozen_lm(cfg: DictConfig, disc_cfg: DictConfig):
    """The LM (q_0), its fingerprint, and the corpus split the way `disc_cfg` says."""
    if not cfg.get("lm_ckpt"):
        raise LmdiscError("train_disc.py needs the language model: python train_disc.py lm_ckpt=PATH")
    lm_ckpt = load_lm_checkpoint(cfg.lm_ckpt, "lm_ckpt")
    L.seed_everything(cfg.seed, workers=True)
    datamodule = _datamodule(cfg, lm_ckpt, disc_cfg)
    lm = build_model(lm_ckpt)
    datamodule.bind_model(lm, training=True)
    lm_info = {
        "path": str(Path(cfg.lm_ckpt).resolve()),
        "sha256": weights_sha256(lm.state_dict()),
        "model": lm_ckpt["lmdisc"]["config"]["model"],
    }
    if "hf_config" in lm_ckpt["lmdisc"]:
        lm_info["hf_config"] = lm_ckpt["lmdisc"]["hf_config"]
    if disc_cfg.train_split == "heldout":
        rank_zero_info(
            f"discriminator.train_split=heldout: training on the first {disc_cfg.heldout_fraction:.0%} of the "
            f"validation text; val/disc_* are measured on the remaining {1 - disc_cfg.heldout_fraction:.0%} only"
        )
    return lm, lm_info, datamodule


def _val_metrics(trainer: L.Trainer) -> dict[str, float]:
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}


def _trainer(cfg: DictConfig, callbacks: list) -> L.Trainer:
    loggers = instantiate_loggers(cfg)
    return instantiate(
        cfg.trainer,
        callbacks=[*callbacks, *instantiate_callbacks(cfg, bool(loggers))],
        logger=loggers,
        plugins=[AtomicCheckpointIO()],
    )


def _write_metrics(
    trainer: L.Trainer, output_dir: Path, metrics: dict, lm_info: dict, train_split: str
) -> dict:
    """metrics.json, with which LM and split the numbers are for; then the loggers are closed."""
    metrics = {**metrics, "lm": lm_info["path"], "lm_sha256": lm_info["sha256"], "train_split": train_split}
    if trainer.is_global_zero:
        atomic_write_json(metrics, output_dir / "metrics.json")
    close_loggers()
    return metrics


def check_discriminator_options(disc_cfg: DictConfig) -> None:
    """The discriminator group's choices, refused under their own names before the LM loads."""
    if disc_cfg.train_split not in ("train", "heldout"):
        raise LmdiscError(f"discriminator.train_split must be train or heldout, got {disc_cfg.train_split!r}")
    fraction = disc_cfg.heldout_fraction
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise LmdiscError(f"discriminator.heldout_fraction must be in (0, 1), got {fraction!r}")
    if disc_cfg.negatives not in NEGATIVES:
        raise LmdiscError(
            f"discriminator.negatives must be one of {list(NEGATIVES)}, got {disc_cfg.negatives!r}"
        )


def train_discriminator(cfg: DictConfig) -> dict[str, Any]:
    validate(cfg)
    disc_cfg = cfg.discriminator
    check_discriminator_options(disc_cfg)
    lm, lm_info, datamodule = _frozen_lm(cfg, disc_cfg)
    output_dir = Path(cfg.paths.output_dir)
    tokenizer = datamodule.tokenizer
    word_class = None  # freq_class: each predicted id's training-frequency class
    if disc_cfg.encoder == "freq_class":
        word_class, _ = token_classes(datamodule.load()["train"].ids, lm.vocab_size)
    discriminator = build_discriminator(
        disc_cfg.encoder,
        lm.vocab_size,
        lm,
        disc_cfg.mlp_size,
        disc_cfg.dropout,
        OmegaConf.to_container(disc_cfg.lstm, resolve=True) if disc_cfg.get("lstm") else None,
        word_class,
        tokenizer.input_only_tokens,
    )
    run_config = save_resolved_config(cfg, output_dir)
    meta = {"tokenizer": tokenizer.state(), "config": run_config, "lm": lm_info, "output_size": lm.vocab_size}
    module = DiscriminatorModule(
        lm,
        discriminator,
        instantiate(cfg.optim.optimizer),
        disc_cfg.negatives,
        disc_cfg.k,
        meta,
        datamodule.protocol.carries_state,
    )
    checkpoint = BoundedCheckpoint(
        bound=ZERO_HEAD_BCE,
        dirpath=str(output_dir / "checkpoints"),
        filename="best",
        monitor="val/disc_bce",
        mode="min",
        save_last=False,
        auto_insert_metric_name=False,
    )
    trainer = _trainer(cfg, [checkpoint])
    trainer.fit(module, datamodule=datamodule)
    metrics = _val_metrics(trainer)
    if not trainer.fast_dev_run:
        if not checkpoint.best_model_path:
            raise LmdiscError(
                f"the discriminator never beat the zero head (val/disc_bce >= 2 ln 2 = {ZERO_HEAD_BCE:.4f}); nothing "
                "was saved. Try discriminator.train_split=heldout, a smaller optim.optimizer.lr, "
                "discriminator=freq_class, or more dropout or weight decay"
            )
        # report the saved discriminator, not the last validation: re-validate the best checkpoint
        trainer.validate(
            module,
            datamodule=datamodule,
            ckpt_path=checkpoint.best_model_path,
            verbose=False,
            weights_only=True,
        )
        metrics.update(_val_metrics(trainer))
        metrics.update(
            {
                "checkpoint": checkpoint.best_model_path,
                "best_val_disc_bce": float(checkpoint.best_model_score),
            }
        )
    return _write_metrics(trainer, output_dir, metrics, lm_info, disc_cfg.train_split)


def score_discriminator(cfg: DictConfig) -> dict[str, Any]:
    """`train_disc.py lm_ckpt=LM disc_ckpt=DISC`: validate a trained discriminator, no training.

    The split comes from the discriminator's own config, so a `heldout` one is scored on the
    part of the validation text it did not train on.
    """
    disc_path = str(Path(cfg.disc_ckpt).resolve())
    discriminator, saved = load_discriminator(disc_path)
    saved_cfg = OmegaConf.create(saved["lmdisc"]["config"]["discriminator"])
    lm, lm_info, datamodule = _frozen_lm(cfg, saved_cfg)
    check_discriminator_of(saved, disc_path, lm_info["sha256"], datamodule.tokenizer, cfg.lm_ckpt)
    module = DiscriminatorModule(
        lm,
        discriminator,
        instantiate(cfg.optim.optimizer),
        saved_cfg.negatives,
        saved_cfg.k,
        carry_state=datamodule.protocol.carries_state,
    )
    trainer = _trainer(cfg, [])
    trainer.validate(module, datamodule=datamodule, verbose=False)
    metrics = _val_metrics(trainer)
    metrics.update(
        {"checkpoint": disc_path, "best_val_disc_bce": metrics["val/disc_bce"], "scored_only": True}
    )
    return _write_metrics(trainer, Path(cfg.paths.output_dir), metrics, lm_info, saved_cfg.train_split)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train_disc")
def main(cfg: DictConfig) -> float | None:
    use_job_dir_for_ddp_children(__spec__.name)
    keep_freed_memory()
    run = score_discriminator if cfg.get("disc_ckpt") else train_discriminator
    metrics = run_main(run, cfg)
    return metrics.get("best_val_disc_bce") if metrics else None


if __name__ == "__main__":
    main()
