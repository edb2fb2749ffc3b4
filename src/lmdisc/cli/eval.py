"""`python eval.py ckpt=PATH [data=...]`: standard-protocol val/test perplexity of a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from lmdisc.allocator import keep_freed_memory
from lmdisc.checkpoint import build_model, check_same_vocab, checkpoint_vocab, load_lm_checkpoint
from lmdisc.data import Vocabulary
from lmdisc.errors import LmdiscError
from lmdisc.evaluation import standard_protocol
from lmdisc.io import atomic_write_json
from lmdisc.scoring import score_file

from . import CONF_DIR
from .common import report_results


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def score(cfg: DictConfig) -> dict[str, Any]:
    """`score_file=FILE`: per-token surprisal/entropy and per-line perplexity of any text."""
    ckpt = load_lm_checkpoint(cfg.ckpt)
    device = _device(cfg.get("device", "auto"))
    model = build_model(ckpt).to(device)
    source = Path(cfg.score_file)
    out = Path(cfg.get("score_out") or Path(cfg.paths.output_dir) / f"{source.stem}.scores.jsonl")
    scored = score_file(model, Vocabulary(checkpoint_vocab(ckpt)), source, out, device=device)
    summary = scored.summary
    print(
        f"{source}: {summary['tokens_scored']:,} tokens scored, {summary['unknown_words']:,} unknown words -> <unk>, "
        f"perplexity {summary['ppl']:.2f}, mean surprisal {summary['mean_surprisal_bits']:.3f} bits, "
        f"mean entropy {summary['mean_entropy_bits']:.3f} bits"
    )
    print(f"wrote {out} (tokens), {out.stem}.lines.jsonl (per-line perplexity), {out.stem}.summary.json")
    return summary


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    if not cfg.get("ckpt"):
        raise LmdiscError("eval.py needs a checkpoint: python eval.py ckpt=PATH [data=ptb]")
    if cfg.get("score_file"):
        return score(cfg)
    ckpt = load_lm_checkpoint(cfg.ckpt)
    data_cfg = cfg.get("data") or ckpt["lmdisc"].get("config", {}).get("data")
    if not data_cfg:
        raise LmdiscError("the checkpoint records no data config; pass data=ptb (or data=text data.path=DIR)")
    datamodule = instantiate(data_cfg)
    check_same_vocab(checkpoint_vocab(ckpt), datamodule.vocab.words)
    device = _device(cfg.get("device", "auto"))
    model = build_model(ckpt).to(device)
    results = standard_protocol(model, datamodule, device)
    out = Path(cfg.get("metrics_file") or Path(cfg.paths.output_dir) / "metrics.json")
    metrics = {
        "checkpoint": str(cfg.ckpt),
        "corpus": str(datamodule.corpus_dir),
        **report_results(results, f"standard protocol: {cfg.ckpt}", out.parent),
    }
    atomic_write_json(metrics, out)
    print(f"wrote {out}")
    return metrics


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="eval")
def main(cfg: DictConfig) -> None:
    keep_freed_memory()
    evaluate(cfg)


if __name__ == "__main__":
    main()
