"""Pieces shared by the entry points: config checks, the results table, closing loggers."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ProgressBar
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict
from rich.console import Console
from rich.table import Table

from lmdisc.analysis.frequency import plot_buckets
from lmdisc.config import instantiate
from lmdisc.errors import LmdiscError
from lmdisc.evaluation import flatten_results
from lmdisc.io import atomic_write_text
from lmdisc.memory import check_evaluation_fits, check_logits_fit


def run_main(task: Callable[[DictConfig], dict], cfg: DictConfig) -> dict | None:
    """Run an entry point's task; a user-facing error (`LmdiscError`) is printed as one clean line
    (no traceback; HYDRA_FULL_ERROR=1 shows it) and the process exits with status 2 (128 + the
    signal's number when a signal stopped training). A W&B run is
    finished either way, so that the next multirun job starts its own."""
    try:
        result = task(cfg)
    except LmdiscError as err:
        close_loggers(exit_code=2)
        if os.environ.get("HYDRA_FULL_ERROR") == "1":  # the user asked for the traceback
            raise
        stopped = err.exit_code != LmdiscError.exit_code  # a signal stopped it (callbacks.preemption)
        print(f"{'stopped' if stopped else 'error'}: {err}", file=sys.stderr, flush=True)
        if _in_multirun():  # Hydra records the failed job (summary.md, the Optuna trial) and stops
            raise
        sys.exit(err.exit_code)
    except BaseException:
        close_loggers(exit_code=1)
        raise
    close_loggers()
    return result


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def is_pretrained(cfg: DictConfig) -> bool:
    """Whether `model=` names a pretrained model (one with a `name_or_path`: hf, smollm2_135m)."""
    model = cfg.get("model")
    return model is not None and "name_or_path" in list(model.keys())


def pretrained_model(cfg: DictConfig, entry: str):
    """(model, tokenizer) of a pretrained `model=` with no checkpoint of ours; a model trained here
    has no weights without one, and is refused rather than used at random initialisation."""
    if not is_pretrained(cfg):
        raise LmdiscError(
            f"{entry} needs ckpt=PATH, or a pretrained model (model=smollm2_135m, or model=hf "
            "model.name_or_path=DIR): a model trained here has no weights without its checkpoint"
        )
    prepare_model_files(cfg)
    from lmdisc.data.tokenizers import load_tokenizer
    from lmdisc.models.build import build_lm

    tokenizer = load_tokenizer(cfg.data.tokenizer_from)
    return build_lm(cfg.model, tokenizer), tokenizer


def prepare_model_files(cfg: DictConfig) -> None:
    """Make a pretrained `model=` readable before anything reads it (the data module reads its
    tokenizer from the model's directory): convert one we can have offline (`model.pretrained`,
    e.g. smollm2_135m), refuse a directory without a model or a hub id while offline, and fetch a
    hub id (`model.allow_download=true`) into the Hugging Face cache, pointing name_or_path there."""
    if not is_pretrained(cfg):
        return
    model = cfg.model
    if OmegaConf.is_missing(model, "name_or_path"):
        raise LmdiscError(
            "model=hf needs model.name_or_path=DIR (or a hub id with model.allow_download=true)"
        )
    allow = bool(model.get("allow_download", False))
    if model.get("pretrained"):
        from lmdisc.models.pretrained import ensure_pretrained

        ensure_pretrained(model.pretrained, model.name_or_path, allow)
        return
    from lmdisc.models.hf import local_snapshot, resolve_model_source

    source, local_only = resolve_model_source(model.name_or_path, allow)
    if not Path(source).is_dir():
        with open_dict(cfg):
            cfg.model.name_or_path = local_snapshot(source, local_only)


def checkpoint_meta(model, tokenizer, run_config: dict) -> dict:
    """What a checkpoint needs besides weights: the tokenizer, the run's config, and a transformers
    model's architecture (so it rebuilds without its source directory)."""
    meta = {"tokenizer": tokenizer.state(), "config": run_config}
    if hasattr(model, "config_dict"):
        meta["hf_config"] = model.config_dict()
    return meta


def check_window_memory(cfg: DictConfig, datamodule, model, chunk: int) -> None:
    """Refuse training or evaluation windows whose logits cannot fit (`lmdisc.memory`)."""
    accelerator = str(OmegaConf.select(cfg, "trainer.accelerator") or "auto")
    use_cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda and torch.cuda.is_available() else "cpu")
    protocol = datamodule.protocol
    corpus = datamodule.load()
    key = "data.bptt" if protocol.carries_state else "data.block_size"
    hint = f"lower data.batch_size or {key}, or set ce_chunk_size (ce, ppl, ppl_reg, rkl_disc)"
    length = protocol.longest_window(len(corpus["train"]), datamodule.batch_size)
    check_logits_fit("training", datamodule.batch_size, length, model.vocab_size, device, hint, chunk)
    check_evaluation_fits(datamodule, model.vocab_size, device)


def instantiate_callbacks(cfg: DictConfig, has_logger: bool) -> list[Callback]:
    """The `callbacks` group, plus the optimiser's averaging callback (NT-ASGD) if any."""
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    if not has_logger:  # Lightning refuses a learning-rate monitor with nothing to log to
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    if OmegaConf.select(cfg, "trainer.enable_progress_bar") is False:  # else Lightning refuses the bar
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    if cfg.get("optim") is not None and cfg.optim.get("averaging") is not None:
        callbacks.append(instantiate(cfg.optim.averaging))
    return callbacks


def instantiate_loggers(cfg: DictConfig, wandb_run_id: str | None = None) -> list | bool:
    """The `logger` group's loggers; a W&B logger continues `wandb_run_id` (a resumed run's)."""
    loggers = []
    for node in (cfg.get("logger") or {}).values():
        if node is None:
            continue
        is_wandb = str(node.get("_target_", "")).endswith("wandb_logger")
        loggers.append(
            instantiate(node, **({"resume_id": wandb_run_id} if is_wandb and wandb_run_id else {}))
        )
    return loggers or False


def save_resolved_config(cfg: DictConfig, output_dir: str | Path) -> dict:
    """Write the fully resolved config next to the run's outputs (rank zero: DDP children share the
    directory) and return it as a plain dict."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    if rank_zero_only.rank == 0:
        atomic_write_text(
            OmegaConf.to_yaml(OmegaConf.create(resolved)), Path(output_dir) / "config_resolved.yaml"
        )
    return resolved


def print_results(results: Mapping[str, Mapping], title: str) -> None:
    table = Table(title=title)
    for column in (
        "split",
        "loss (nats/token)",
        "perplexity",
        "word-level PPL",
        "tokens",
        "words",
        "tokens/s",
    ):
        table.add_column(column, justify="right")
    for split, row in results.items():
        table.add_row(
            split,
            f"{row['loss']:.4f}",
            f"{row['ppl']:.2f}",
            f"{row['word_ppl']:.2f}",
            f"{row['tokens']:,}",
            f"{row['words']:,.0f}",
            f"{row['tokens_per_s']:,.0f}",
        )
    console = Console()
    console.print(table)
    for split, row in results.items():
        if "buckets" not in row:
            continue
        buckets = Table(title=f"{split}: by training-set frequency of the word")
        for column in ("train count", "words", "share", "mean log-prob per word", "perplexity"):
            buckets.add_column(column, justify="right")
        for b in row["buckets"]:
            buckets.add_row(
                b["bucket"],
                f"{b['words']:,.0f}",
                f"{b['share']:.3f}",
                f"{b['mean_logprob']:.3f}",
                f"{b['ppl']:.1f}",
            )
        console.print(buckets)


def report_results(results: dict[str, dict], title: str, output_dir: str | Path) -> dict:
    """Print the tables, plot the frequency buckets next to metrics.json, return the flat metrics."""
    print_results(results, title)
    flat = flatten_results(results)
    if "buckets" in flat:
        plot = plot_buckets(flat["buckets"], Path(output_dir) / "buckets.png", title)
        flat["buckets_plot"] = str(plot)
    return flat


def close_loggers(exit_code: int | None = None) -> None:
    """Finish a W&B run, failed or not, so that the next multirun job starts its own."""
    try:
        import wandb
    except ImportError:
        return
    if wandb.run is not None:
        wandb.finish(exit_code=exit_code)
