"""`python train.py ...`: train or fine-tune a language model, then evaluate it by its protocol."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from omegaconf import DictConfig, OmegaConf

from lmdisc.allocator import keep_freed_memory
from lmdisc.callbacks import DiscriminatorRefresh, GradualUnfreezing
from lmdisc.checkpoint import (
    AtomicCheckpointIO,
    build_model,
    checkpoint_tokenizer,
    datamodule_for_checkpoint,
    load_checkpoint,
    load_lm_checkpoint,
    load_lm_weights,
    weights_sha256,
)
from lmdisc.config import instantiate
from lmdisc.data.tokenizers import same_tokenizer_or_refuse
from lmdisc.distributed import use_job_dir_for_ddp_children
from lmdisc.environment import environment
from lmdisc.errors import LmdiscError
from lmdisc.evaluation import evaluate_splits
from lmdisc.finetune import plan_finetune
from lmdisc.io import atomic_write_json
from lmdisc.models.build import build_lm
from lmdisc.models.hf import HFCausalLM
from lmdisc.modules import LanguageModel
from lmdisc.resume import refuse_other_run
from lmdisc.sharding import check_fsdp_run, uses_fsdp
from lmdisc.validation import validate
from lmdisc.wandb_tracking import log_images, log_run_config, log_summary

from . import CONF_DIR
from .common import (
    check_window_memory,
    checkpoint_meta,
    close_loggers,
    instantiate_callbacks,
    instantiate_loggers,
    prepare_model_files,
    report_results,
    run_main,
    save_resolved_config,
)
from .eval import autocast


def build_datamodule(cfg: DictConfig):
    """The corpus, read with `init_from`'s tokenizer when fine-tuning (`datamodule_for_checkpoint`)."""
    if cfg.get("init_from"):
        ckpt = load_lm_checkpoint(cfg.init_from, "init_from")
        name = f"the init_from checkpoint {cfg.init_from}"
        return datamodule_for_checkpoint(cfg.data, ckpt, name, same_text=False), ckpt
    return instantiate(cfg.data), None


def build_module(cfg: DictConfig, datamodule, init_ckpt: dict | None, run_config: dict) -> LanguageModel:
    tokenizer = datamodule.tokenizer
    finetuned = (init_ckpt or {}).get("lmdisc", {}).get("finetune") or {}
    # a LoRA checkpoint holds adapters alone: its base with the adapters merged is the start
    model = build_model(init_ckpt) if finetuned.get("mode") == "lora" else build_lm(cfg.model, tokenizer)
    if cfg.data.get("tokenizer") == "hf" and not isinstance(model, HFCausalLM):
        raise LmdiscError(
            f"data.tokenizer=hf is a pretrained model's own tokenizer, for model=hf; {type(model).__name__} is "
            "trained here: use data.tokenizer=word or bpe (data.tokenizer_from=DIR borrows another tokenizer)"
        )
    untied = {}
    if init_ckpt is not None and finetuned.get("mode") != "lora":
        if finetuned.get("untied_head"):  # its output layer has weights of its own
            untied = model.untie_output()
        load_lm_weights(model, init_ckpt)
    plan = plan_finetune(
        model,
        OmegaConf.to_container(cfg.finetune, resolve=True) if cfg.get("finetune") else None,
        pretrained=init_ckpt is not None or isinstance(model, HFCausalLM),
        base=_finetune_base(cfg, model),
    )
    if finetuned.get("untied_head"):
        plan.meta["untied_head"] = True  # and so do the checkpoints of this run
    run_config["model"] = {**run_config["model"], **untied, **plan.config_changes}
    rank_zero_info(plan.describe())
    protocol = datamodule.bind_model(model, training=True)
    scheduler = cfg.scheduler.get("scheduler")
    return LanguageModel(
        model=model,
        loss=instantiate(cfg.loss),
        optimizer=instantiate(cfg.optim.optimizer),
        scheduler=instantiate(scheduler) if scheduler is not None else None,
        scheduler_interval=cfg.scheduler.get("interval", "epoch"),
        scheduler_monitor=cfg.scheduler.get("monitor", "val/loss"),
        bptt=cfg.data.bptt,
        scale_lr_by_window=bool(cfg.data.get("variable_bptt", False)) and protocol.carries_state,
        checkpoint_meta=checkpoint_meta(model, tokenizer, run_config),
        carry_state=protocol.carries_state,
        ce_chunk_size=cfg.get("ce_chunk_size"),
        finetune_plan=plan,
        layer_decay=float(cfg.optim.get("layer_decay") or 1.0),
    )


def _finetune_base(cfg: DictConfig, model) -> dict | None:
    """Where a LoRA run's base weights come from (its checkpoints store the adapters alone): the
    init_from checkpoint, else the pretrained model's directory, with the weights' fingerprint."""
    if (cfg.get("finetune") or {}).get("mode") != "lora":
        return None
    base = {"sha256": weights_sha256(model.state_dict())}
    if cfg.get("init_from"):
        return {**base, "init_from": str(Path(cfg.init_from).resolve())}
    return {**base, "pretrained": str(cfg.model.get("name_or_path"))}


def _effective_batch(datamodule, trainer: L.Trainer) -> str:
    """Sequences and tokens per optimiser step, gradient accumulation and processes included."""
    window = datamodule.bptt if datamodule.protocol.carries_state else datamodule.block_size
    accumulate = trainer.accumulate_grad_batches
    sequences = datamodule.batch_size * accumulate * trainer.world_size
    return (
        f"effective batch: {datamodule.batch_size} sequences x {accumulate} accumulated x {trainer.world_size} "
        f"processes = {sequences} sequences of {window} tokens ({sequences * window:,} tokens) per optimiser step"
    )


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, then evaluate the best checkpoint by its protocol; returns metrics.json's content."""
    if cfg.get("pipeline") is not None:
        raise LmdiscError(
            "this experiment is a pipeline, not a single run: python reproduce.py experiment=<the same name>"
        )
    validate(cfg)
    output_dir = Path(cfg.paths.output_dir)
    prepare_model_files(cfg)
    run_config = save_resolved_config(cfg, output_dir)
    L.seed_everything(cfg.seed, workers=True)
    datamodule, init_ckpt = build_datamodule(cfg)
    tokenizer = datamodule.tokenizer
    resume = load_checkpoint(cfg.ckpt_path) if cfg.get("ckpt_path") else None
    if resume is not None:
        resumed = checkpoint_tokenizer(resume)
        same_tokenizer_or_refuse(resumed, tokenizer, f"the checkpoint {cfg.ckpt_path}", "the corpus")
    module = build_module(cfg, datamodule, init_ckpt, run_config)
    if resume is not None:  # (after build_module: it records the fine-tuning's model changes)
        refuse_other_run(resume["lmdisc"].get("config") or {}, run_config, cfg.ckpt_path)
    check_window_memory(cfg, datamodule, module.model, module.chunk_size)
    check_fsdp_run(cfg.trainer, module.model, module.chunk_size)
    env = environment()
    if rank_zero_only.rank == 0:  # DDP children share the run directory (lmdisc.distributed)
        tokenizer.save(output_dir / "tokenizer.json")
        atomic_write_json(env, output_dir / "environment.json")
    loggers = instantiate_loggers(cfg, wandb_run_id=resume["lmdisc"].get("wandb_run_id") if resume else None)
    log_run_config(loggers, {**run_config, "environment": env})
    # variable BPTT changes the number of windows every epoch and blocks start at a new offset:
    # rebuild the loader each epoch so Lightning's batch count matches it
    reload = datamodule.variable_bptt or not datamodule.protocol.carries_state
    callbacks = instantiate_callbacks(cfg, bool(loggers))
    if module.finetune_plan.unfreeze_every_n_epochs:
        callbacks.append(GradualUnfreezing(module.finetune_plan.unfreeze_every_n_epochs))
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
        # FSDP writes sharded directories itself, atomically (lmdisc.sharding.FSDPStrategy)
        plugins=[] if uses_fsdp(cfg.trainer) else [AtomicCheckpointIO()],
        **({"reload_dataloaders_every_n_epochs": 1} if reload else {}),
    )
    rank_zero_info(_effective_batch(datamodule, trainer))
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
        "vocab_size": tokenizer.vocab_size,
        "tokenizer": tokenizer.describe(),
        "detokenize": datamodule.spec.detokenize,
        "protocol": datamodule.protocol.describe(),
        "parameters": sum(p.numel() for p in module.model.parameters()),
        "trainable_parameters": module.finetune_plan.trainable,
        "finetune_mode": module.finetune_plan.mode,
        "environment": env,
    }
    if cfg.get("evaluate", True) and trainer.is_global_zero:
        ckpt_file = _best_checkpoint(trainer)
        if ckpt_file:
            model = build_model(load_checkpoint(ckpt_file))
            device = trainer.strategy.root_device  # Lightning moves the module to the CPU after fit
            # in the precision it trained in: bf16-mixed evaluates under bf16 autocast (softmax in fp32)
            mixed = "bf16-mixed" if str(cfg.trainer.get("precision")) == "bf16-mixed" else "32-true"
            with autocast(device, mixed):
                results = evaluate_splits(model.to(device), datamodule, device)
            flat = report_results(results, f"{datamodule.protocol.describe()}: {ckpt_file}", output_dir)
            metrics.update({"checkpoint": str(ckpt_file), **flat})
            log_images(loggers, {"eval/buckets": flat["buckets_plot"]} if "buckets_plot" in flat else {})
    if trainer.is_global_zero:
        log_summary(loggers, metrics)
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
    use_job_dir_for_ddp_children(__spec__.name)
    keep_freed_memory()
    torch.set_float32_matmul_precision("high")
    metrics = run_main(train, cfg)
    return metrics.get("val/ppl") if metrics else None


if __name__ == "__main__":
    main()
