"""`python -m lmdisc.cli.export ckpt=PATH out=DIR`: a Hugging Face directory (model + tokenizer) that
transformers loads with the same logits (`lmdisc.export`)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from lmdisc.checkpoint import load_lm_checkpoint
from lmdisc.errors import LmdiscError
from lmdisc.export import export_checkpoint

from . import CONF_DIR
from .common import run_main


def export(cfg: DictConfig) -> dict:
    if not cfg.get("ckpt") or not cfg.get("out"):
        raise LmdiscError("export needs both: python -m lmdisc.cli.export ckpt=PATH out=DIR")
    result = export_checkpoint(load_lm_checkpoint(cfg.ckpt), cfg.out)
    print(
        f"wrote {result['out']} ({result['architecture']}); transformers reloads it with logits within "
        f"{result['max_abs_logit_difference']:.1e} of ours"
    )
    return result


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="export")
def main(cfg: DictConfig) -> None:
    run_main(export, cfg)


if __name__ == "__main__":
    main()
