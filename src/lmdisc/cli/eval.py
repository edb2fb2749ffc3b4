"""`python eval.py ckpt=PATH [data=...]`: val/test perplexity (token- and word-level) of a checkpoint,
or of a pretrained model zero-shot (`eval.py model=smollm2_135m data=wikitext2`), by the protocol
that fits the model; `score_file=FILE` scores any text instead."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from lmdisc.allocator import keep_freed_memory
from lmdisc.checkpoint import build_model, checkpoint_tokenizer, datamodule_for_checkpoint, load_lm_checkpoint
from lmdisc.config import instantiate
from lmdisc.data.protocols import BlockProtocol, choose_protocol
from lmdisc.errors import LmdiscError
from lmdisc.evaluation import evaluate_splits
from lmdisc.io import atomic_write_json
from lmdisc.memory import check_evaluation_fits
from lmdisc.models.build import build_lm
from lmdisc.scoring import score_file

from . import CONF_DIR
from .common import is_pretrained, prepare_model_files, pretrained_model, report_results, run_main

PRECISIONS = ("32-true", "bf16-mixed")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast(device: torch.device, precision: str):
    """bf16 autocast for `bf16-mixed` (losses and metrics still take their softmax in fp32)."""
    if precision not in PRECISIONS:
        raise LmdiscError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if precision == "bf16-mixed":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def load_model_and_data(cfg: DictConfig):
    """(model, datamodule, what was evaluated): a checkpoint of ours with its corpus (or `data=`),
    or a pretrained `model=` zero-shot on `data=`."""
    if cfg.get("ckpt"):
        ckpt = load_lm_checkpoint(cfg.ckpt)
        data_cfg = cfg.get("data") or ckpt["lmdisc"].get("config", {}).get("data")
        if not data_cfg:
            raise LmdiscError(
                "the checkpoint records no data config; pass data=ptb (or data=text data.path=DIR)"
            )
        own = cfg.get("data") is None
        datamodule = datamodule_for_checkpoint(data_cfg, ckpt, f"the checkpoint {cfg.ckpt}", own_config=own)
        return build_model(ckpt), datamodule, str(cfg.ckpt)
    if not is_pretrained(cfg):
        raise LmdiscError(
            "eval.py needs a checkpoint or a pretrained model: python eval.py ckpt=PATH [data=ptb], or "
            "python eval.py model=smollm2_135m data=wikitext2 (model=hf model.name_or_path=DIR); a model "
            "trained here has no weights without its checkpoint"
        )
    if cfg.get("data") is None or cfg.data.get("_target_") is None:
        raise LmdiscError(
            "a pretrained model needs a corpus to evaluate on: add data=wikitext2 (or data=ptb, ...)"
        )
    prepare_model_files(cfg)
    datamodule = instantiate(cfg.data)
    model = build_lm(cfg.model, datamodule.tokenizer)
    return model, datamodule, str(cfg.model.get("name_or_path") or cfg.model._target_)


def scoring_setup(cfg: DictConfig):
    """(model, tokenizer, protocol) for `score_file`, reading no corpus: a checkpoint brings its
    tokenizer and windows (its recorded data config, or `data=`); a pretrained model its own
    tokenizer and a sliding window of `data.block_size` (default: its context, at most 1024)."""
    if cfg.get("ckpt"):
        ckpt = load_lm_checkpoint(cfg.ckpt)
        model = build_model(ckpt)
        given = cfg.get("data") is not None and cfg.data.get("_target_") is not None
        data = (
            OmegaConf.to_container(cfg.data, resolve=True)
            if given
            else ckpt["lmdisc"]["config"].get("data") or {}
        )
        protocol = choose_protocol(
            data.get("protocol", "auto"),
            model,
            data.get("bptt", 35),
            False,
            data.get("block_size", 256),
            data.get("eval_stride"),
        )
        return model, checkpoint_tokenizer(ckpt), protocol
    model, tokenizer = pretrained_model(cfg, "score_file")
    block = cfg.data.get("block_size") or min(model.max_positions or 1024, 1024)
    return model, tokenizer, BlockProtocol(block, cfg.data.get("eval_stride"))


def score(cfg: DictConfig) -> dict[str, Any]:
    """`score_file=FILE`: per-word surprisal/entropy and per-line perplexity of any text."""
    model, tokenizer, protocol = scoring_setup(cfg)
    device = resolve_device(cfg.get("device", "auto"))
    model = model.to(device).eval()
    source = Path(cfg.score_file)
    out = Path(cfg.get("score_out") or Path(cfg.paths.output_dir) / f"{source.stem}.scores.jsonl")
    with autocast(device, cfg.get("precision", "32-true")):
        scored = score_file(model, tokenizer, source, out, protocol, device)
    summary = scored.summary
    print(
        f"{source}: {summary['tokens_scored']:,} tokens scored, {summary['unknown_words']:,} unknown words -> <unk>, "
        f"perplexity {summary['ppl']:.2f} (word-level {summary['word_ppl']:.2f}), mean surprisal "
        f"{summary['mean_surprisal_bits']:.3f} bits, mean entropy {summary['mean_entropy_bits']:.3f} bits"
    )
    print(f"wrote {out} (words), {out.stem}.lines.jsonl (per-line perplexity), {out.stem}.summary.json")
    return summary


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    if cfg.get("score_file"):
        return score(cfg)
    model, datamodule, name = load_model_and_data(cfg)
    device = resolve_device(cfg.get("device", "auto"))
    model = model.to(device).eval()
    protocol = datamodule.bind_model(model)
    splits = list(cfg.get("splits") or ())
    if not splits or set(splits) - {"valid", "test"}:
        raise LmdiscError(f"splits must name valid and/or test, got {splits}")
    check_evaluation_fits(datamodule, model.vocab_size, device, splits)
    with autocast(device, cfg.get("precision", "32-true")):
        results = evaluate_splits(model, datamodule, device, splits=splits)
    out = Path(cfg.get("metrics_file") or Path(cfg.paths.output_dir) / "metrics.json")
    metrics = {
        "checkpoint" if cfg.get("ckpt") else "model": name,
        "corpus": str(datamodule.corpus_dir),
        "tokenizer": datamodule.tokenizer.describe(),
        "protocol": protocol.describe(),
        "precision": cfg.get("precision", "32-true"),
        "detokenize": datamodule.spec.detokenize,
        **report_results(results, f"{protocol.describe()}: {name}", out.parent),
    }
    atomic_write_json(metrics, out)
    print(f"wrote {out}")
    return metrics


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="eval")
def main(cfg: DictConfig) -> None:
    keep_freed_memory()
    run_main(evaluate, cfg)


if __name__ == "__main__":
    main()
