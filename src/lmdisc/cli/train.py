"""`python train.py ...`: train or fine-tune a language model, then evaluate it by the standard protocol."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from omegaconf import DictConfig

from lmdisc.checkpoint import (
    AtomicCheckpointIO,
    build_model,
    check_same_vocab,
    checkpoint_vocab,
    load_checkpoint,
    model_state_dict,
)
from lmdisc.evaluation import standard_protocol
from lmdisc.io import atomic_write_json
from lmdisc.modules import LanguageModel

from . import CONF_DIR
from .common import close_loggers, report_results, require_positive, save_resolved_config

POSITIVE_KEYS = (
    "data.batch_size",
    "data.eval_batch_size",
    "data.test_batch_size",
    "data.bptt",
    "optim.optimizer.lr",
    "trainer.max_epochs",
)


def _callbacks(cfg: DictConfig, has_logger: bool) -> list[L.Callback]:
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    if not has_logger:  # Lightning refuses a learning-rate monitor with nothing to log to
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    if cfg.optim.get("averaging") is not None:
        callbacks.append(instantiate(cfg.optim.averaging))
    return callbacks


def _loggers(cfg: DictConfig) -> list | bool:
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    return loggers or False


def build_module(cfg: DictConfig, vocab: list[str], run_config: dict) -> LanguageModel:
    model = instantiate(cfg.model, vocab_size=len(vocab))
    if cfg.get("init_from"):
        ckpt = load_checkpoint(cfg.init_from)
        check_same_vocab(checkpoint_vocab(ckpt), vocab, what=f"init_from checkpoint {cfg.init_from}")
        model.load_state_dict(model_state_dict(ckpt))
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
    require_positive(cfg, *POSITIVE_KEYS)
    output_dir = Path(cfg.paths.output_dir)
    run_config = save_resolved_config(cfg, output_dir)
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    vocab = datamodule.vocab.words
    module = build_module(cfg, vocab, run_config)
    loggers = _loggers(cfg)
    trainer: L.Trainer = instantiate(
        cfg.trainer, callbacks=_callbacks(cfg, bool(loggers)), logger=loggers, plugins=[AtomicCheckpointIO()]
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
    fit_seconds = time.perf_counter() - start
    metrics: dict[str, Any] = {
        "fit_seconds": fit_seconds,
        "train_tokens_per_s": module.tokens_seen * trainer.world_size / fit_seconds,
        "global_step": trainer.global_step,
        "epochs": trainer.current_epoch,
        "vocab_size": len(vocab),
    }
    if cfg.get("evaluate", True) and trainer.is_global_zero:
        best = getattr(trainer.checkpoint_callback, "best_model_path", "") or ""
        ckpt_file = best if best else getattr(trainer.checkpoint_callback, "last_model_path", "")
        if ckpt_file:
            ckpt = load_checkpoint(ckpt_file)
            model = build_model(ckpt)
            device = module.device
            results = standard_protocol(model.to(device), datamodule, device)
            flat = report_results(results, f"standard protocol: {ckpt_file}", output_dir)
            metrics.update({"checkpoint": str(ckpt_file), **flat})
    if trainer.is_global_zero:
        atomic_write_json(metrics, output_dir / "metrics.json")
    close_loggers()
    return metrics


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    torch.set_float32_matmul_precision("high")
    metrics = train(cfg)
    return metrics.get("val/ppl")
