"""`python train.py ...`: train or fine-tune a language model, then evaluate it by the standard protocol."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from lmdisc.allocator import keep_freed_memory
from lmdisc.callbacks import DiscriminatorRefresh
from lmdisc.checkpoint import (
    AtomicCheckpointIO,
    build_model,
    check_same_vocab,
    checkpoint_vocab,
    load_checkpoint,
    load_lm_checkpoint,
    load_lm_weights,
)
from lmdisc.errors import LmdiscError
from lmdisc.evaluation import standard_protocol
from lmdisc.io import atomic_write_json
from lmdisc.modules import LanguageModel

from . import CONF_DIR
from .common import (
    close_loggers,
    instantiate_callbacks,
    instantiate_loggers,
    report_results,
    require_positive,
    require_positive_int,
    save_resolved_config,
)

COUNT_KEYS = (
    "data.batch_size",
    "data.eval_batch_size",
    "data.test_batch_size",
    "data.bptt",
    "trainer.max_epochs",
)


def build_module(cfg: DictConfig, vocab: list[str], run_config: dict) -> LanguageModel:
    model = instantiate(cfg.model, vocab_size=len(vocab))
    if cfg.get("init_from"):
        ckpt = load_lm_checkpoint(cfg.init_from, "init_from")
        check_same_vocab(checkpoint_vocab(ckpt), vocab, what=f"init_from checkpoint {cfg.init_from}")
        load_lm_weights(model, ckpt)
    scheduler = cfg.scheduler.get("scheduler")
    return LanguageModel(
        model=model,
        loss=instantiate(cfg.loss),
        optimizer=instantiate(cfg.optim.optimizer),
        scheduler=instantiate(scheduler) if scheduler is not None else None,
        scheduler_interval=cfg.scheduler.get("interval", "epoch"),
        scheduler_monitor=cfg.scheduler.get("monitor", "val/loss"),
        bptt=cfg.data.bptt,
        scale_lr_by_window=bool(cfg.data.get("variable_bptt", False)),
        vocab=vocab,
        run_config=run_config,
    )


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, then evaluate the best checkpoint by the standard protocol; returns metrics.json's content."""
    if cfg.get("pipeline") is not None:
        raise LmdiscError(
            "this experiment is a pipeline, not a single run: python reproduce.py experiment=<the same name>"
        )
    require_positive(cfg, "optim.optimizer.lr")
    require_positive_int(cfg, *COUNT_KEYS)
    output_dir = Path(cfg.paths.output_dir)
    run_config = save_resolved_config(cfg, output_dir)
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    vocab = datamodule.vocab.words
    if cfg.get("ckpt_path"):
        check_same_vocab(
            checkpoint_vocab(load_checkpoint(cfg.ckpt_path)), vocab, what=f"checkpoint {cfg.ckpt_path}"
        )
    module = build_module(cfg, vocab, run_config)
    loggers = instantiate_loggers(cfg)
    # variable BPTT changes the number of windows every epoch: rebuild the loader each epoch so
    # Lightning's batch count (validation trigger, epoch end) matches it
    reload = {"reload_dataloaders_every_n_epochs": 1} if datamodule.variable_bptt else {}
    callbacks = instantiate_callbacks(cfg, bool(loggers))
    if cfg.loss.get("refresh_every_n_epochs"):
        callbacks.append(
            DiscriminatorRefresh(
                cfg.loss.refresh_every_n_epochs, cfg.loss.refresh_epochs, cfg.loss.refresh_lr
            )
        )
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=loggers,
        plugins=[AtomicCheckpointIO()],
        **reload,
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
    fit_seconds = time.perf_counter() - start
    metrics: dict[str, Any] = {
        "fit_seconds": fit_seconds,
        # of this process's part of a resumed run; None when it resumed a finished one
        "train_tokens_per_s": module.tokens_seen * trainer.world_size / fit_seconds
        if module.tokens_seen
        else None,
        "global_step": trainer.global_step,
        "epochs": trainer.current_epoch,
        "vocab_size": len(vocab),
    }
    if cfg.get("evaluate", True) and trainer.is_global_zero:
        ckpt_file = _best_checkpoint(trainer)
        if ckpt_file:
            ckpt = load_checkpoint(ckpt_file)
            model = build_model(ckpt)
            device = trainer.strategy.root_device  # Lightning moves the module to the CPU after fit
            results = standard_protocol(model.to(device), datamodule, device)
            flat = report_results(results, f"standard protocol: {ckpt_file}", output_dir)
            metrics.update({"checkpoint": str(ckpt_file), **flat})
    if trainer.is_global_zero:
        atomic_write_json(metrics, output_dir / "metrics.json")
    close_loggers()
    return metrics


def _best_checkpoint(trainer: L.Trainer) -> str:
    """The monitored checkpoint callback's best file, else the most recent one saved."""
    callbacks = trainer.checkpoint_callbacks
    for callback in callbacks:
        if callback.monitor and callback.best_model_path:
            return callback.best_model_path
    return next(
        (c.best_model_path or c.last_model_path for c in callbacks if c.best_model_path or c.last_model_path),
        "",
    )


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    keep_freed_memory()
    torch.set_float32_matmul_precision("high")
    metrics = train(cfg)
    return metrics.get("val/ppl")


if __name__ == "__main__":
    main()
