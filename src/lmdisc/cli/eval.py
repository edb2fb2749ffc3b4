"""`python eval.py ckpt=PATH [data=...]`: standard-protocol val/test perplexity of a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from lmdisc.checkpoint import build_model, check_same_vocab, checkpoint_vocab, load_checkpoint
from lmdisc.errors import LmdiscError
from lmdisc.evaluation import flatten_results, standard_protocol
from lmdisc.io import atomic_write_json

from . import CONF_DIR
from .common import print_results


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    if not cfg.get("ckpt"):
        raise LmdiscError("eval.py needs a checkpoint: python eval.py ckpt=PATH [data=ptb]")
    ckpt = load_checkpoint(cfg.ckpt)
    data_cfg = cfg.get("data") or ckpt["lmdisc"].get("config", {}).get("data")
    if not data_cfg:
        raise LmdiscError("the checkpoint records no data config; pass data=ptb (or data=text data.path=DIR)")
    datamodule = instantiate(data_cfg)
    check_same_vocab(checkpoint_vocab(ckpt), datamodule.vocab.words)
    device = _device(cfg.get("device", "auto"))
    model = build_model(ckpt).to(device)
    results = standard_protocol(model, datamodule, device)
    print_results(results, f"standard protocol: {cfg.ckpt}")
    metrics = {
        "checkpoint": str(cfg.ckpt),
        "corpus": str(datamodule.corpus_dir),
        **flatten_results(results),
    }
    out = Path(cfg.get("metrics_file") or Path(cfg.paths.output_dir) / "metrics.json")
    atomic_write_json(metrics, out)
    print(f"wrote {out}")
    return metrics


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="eval")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)
