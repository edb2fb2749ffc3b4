"""`python eval.py ckpt=PATH [data=...]`: val/test perplexity (token- and word-level) of a checkpoint,
or of a pretrained model zero-shot (`eval.py model=smollm2_135m data=wikitext2`), or of an ensemble
(`"ensemble=[a.ckpt,b.ckpt]"`, `lmdisc.ensemble`), by the protocol that fits the model;
`score_file=FILE` scores any text instead, and `features_file=FILE` writes its hidden states
(`lmdisc.features`)."""

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
from lmdisc.ensemble import evaluate_ensemble, load_ensemble_and_data, print_members, scoring_ensemble
from lmdisc.errors import LmdiscError
from lmdisc.evaluation import evaluate_splits
from lmdisc.features import extract_features, read_text_lines, write_features
from lmdisc.io import atomic_write_json
from lmdisc.memory import check_evaluation_fits
from lmdisc.models.build import build_lm
from lmdisc.scoring import score_file
from lmdisc.validation import validate

from . import CONF_DIR
from .common import is_pretrained, prepare_model_files, pretrained_model, report_results, run_main

PRECISIONS = ("32-true", "bf16-mixed")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def eval_precision(cfg: DictConfig) -> str:
    """`precision=` (the precision group, which sets trainer.precision)."""
    return str(OmegaConf.select(cfg, "trainer.precision", default="32-true"))


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


def _protocol(data: dict, model):
    return choose_protocol(
        data.get("protocol", "auto"),
        model,
        data.get("bptt", 35),
        False,
        data.get("block_size", 256),
        data.get("eval_stride"),
    )


def scoring_setup(cfg: DictConfig):
    """(model, tokenizer, protocol) for `score_file`, reading no corpus: a checkpoint (or an ensemble)
    brings its tokenizer and windows (its recorded data config, or `data=`); a pretrained model its
    own tokenizer and a sliding window of `data.block_size` (default: its context, at most 1024)."""
    if cfg.get("ensemble"):
        model, tokenizer, data = scoring_ensemble(cfg)
        return model, tokenizer, _protocol(data, model)
    if cfg.get("ckpt"):
        ckpt = load_lm_checkpoint(cfg.ckpt)
        model = build_model(ckpt)
        given = cfg.get("data") is not None and cfg.data.get("_target_") is not None
        data = (
            OmegaConf.to_container(cfg.data, resolve=True)
            if given
            else ckpt["lmdisc"]["config"].get("data") or {}
        )
        return model, checkpoint_tokenizer(ckpt), _protocol(data, model)
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
    with autocast(device, eval_precision(cfg)):
        scored = score_file(model, tokenizer, source, out, protocol, device)
    summary = scored.summary
    print(
        f"{source}: {summary['tokens_scored']:,} tokens scored, {summary['unknown_words']:,} unknown words -> <unk>, "
        f"perplexity {summary['ppl']:.2f} (word-level {summary['word_ppl']:.2f}), mean surprisal "
        f"{summary['mean_surprisal_bits']:.3f} bits, mean entropy {summary['mean_entropy_bits']:.3f} bits"
    )
    print(f"wrote {out} (words), {out.stem}.lines.jsonl (per-line perplexity), {out.stem}.summary.json")
    return summary


def features(cfg: DictConfig) -> dict[str, Any]:
    """`features_file=FILE features_out=OUT.npz`: hidden states per line (and per token) of a
    checkpoint or a pretrained model."""
    if cfg.get("ensemble"):
        raise LmdiscError("features_file reads one model: pass ckpt= (or model=), not ensemble=")
    if not cfg.get("features_out"):
        raise LmdiscError("features_file needs features_out=FILE.npz (where to write the features)")
    lines = read_text_lines(cfg.features_file)
    if cfg.get("ckpt"):
        ckpt = load_lm_checkpoint(cfg.ckpt)
        model, tokenizer, name = build_model(ckpt), checkpoint_tokenizer(ckpt), str(cfg.ckpt)
    else:
        model, tokenizer = pretrained_model(cfg, "features_file")
        name = str(cfg.model.get("name_or_path"))
    device = resolve_device(cfg.get("device", "auto"))
    model = model.to(device)
    layer, per_token = cfg.get("features_layer", -1), bool(cfg.get("features_per_token", False))
    with autocast(device, eval_precision(cfg)):
        arrays = extract_features(model, tokenizer, lines, layer, per_token, device)
    out = write_features(arrays, Path(cfg.features_out))
    shape = arrays["features"].shape
    print(
        f"{cfg.features_file}: {shape[0]:,} lines, {shape[1]} features each (layer {layer}, "
        f"{'mean-pooled and per token' if per_token else 'mean-pooled'}), {int(arrays['unknown_words']):,} "
        f"unknown words; wrote {out}"
    )
    return {"model": name, "features_out": str(out), "lines": shape[0], "size": shape[1], "layer": layer}


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    validate(cfg)
    if cfg.get("ensemble") and cfg.get("ckpt"):
        raise LmdiscError("pass either ckpt=PATH or ensemble=[PATH,...], not both")
    if cfg.get("features_file"):
        return features(cfg)
    if cfg.get("score_file"):
        return score(cfg)
    device = resolve_device(cfg.get("device", "auto"))
    splits = list(cfg.get("splits") or ())
    if not splits or set(splits) - {"valid", "test"}:
        raise LmdiscError(f"splits must name valid and/or test, got {splits}")
    extra: dict[str, Any] = {}
    if cfg.get("ensemble"):
        model, datamodule, paths, fit = load_ensemble_and_data(cfg)
        name = f"ensemble of {len(paths)}"
    else:
        model, datamodule, name = load_model_and_data(cfg)
    model = model.to(device).eval()
    protocol = datamodule.bind_model(model)
    check_evaluation_fits(datamodule, model.vocab_size, device, splits)
    with autocast(device, eval_precision(cfg)):
        if cfg.get("ensemble"):
            results, choice = evaluate_ensemble(model, datamodule, device, splits, fit, paths)
            print_members(results, model.weights)
            extra = {"ensemble": paths, "weights": model.weights, "weights_choice": choice}
        else:
            results = evaluate_splits(model, datamodule, device, splits=splits)
    out = Path(cfg.get("metrics_file") or Path(cfg.paths.output_dir) / "metrics.json")
    metrics = {
        "checkpoint" if cfg.get("ckpt") else "model": name,
        **extra,
        "corpus": str(datamodule.corpus_dir),
        "tokenizer": datamodule.tokenizer.describe(),
        "protocol": protocol.describe(),
        "precision": eval_precision(cfg),
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
