"""`python -m lmdisc.cli.consolidate ckpt=DIR out=FILE`: one `weights_only` checkpoint file from the
sharded directory trainer=fsdp writes (full weights and the run's metadata; no optimiser state, so
it serves eval.py, init_from, export and train_disc.py, not ckpt_path=)."""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from lmdisc.checkpoint import load_checkpoint
from lmdisc.errors import LmdiscError
from lmdisc.io import atomic_torch_save

from . import CONF_DIR
from .common import run_main


def consolidate(cfg: DictConfig) -> dict:
    if not cfg.get("ckpt") or not cfg.get("out"):
        raise LmdiscError("consolidate needs both: python -m lmdisc.cli.consolidate ckpt=DIR out=FILE")
    source = Path(cfg.ckpt)
    if not source.is_dir():
        raise LmdiscError(f"ckpt={source} is not a sharded checkpoint directory (trainer=fsdp writes those)")
    checkpoint = load_checkpoint(source)
    checkpoint.pop("optimizer_states", None)
    out = Path(cfg.out)
    atomic_torch_save(checkpoint, out)
    tensors = sum(t.numel() for t in checkpoint["state_dict"].values())
    print(f"wrote {out}: {len(checkpoint['state_dict'])} tensors, {tensors:,} numbers, from {source}")
    return {"out": str(out), "tensors": len(checkpoint["state_dict"])}


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="consolidate")
def main(cfg: DictConfig) -> None:
    run_main(consolidate, cfg)


if __name__ == "__main__":
    main()
