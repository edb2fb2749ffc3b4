"""`python reproduce.py experiment=reproduce_ptb_small`: the whole rkl_disc pipeline, then results.md."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from lmdisc.errors import LmdiscError
from lmdisc.reproduce import Pipeline, write_report

from . import CONF_DIR


def reproduce(cfg: DictConfig) -> Path:
    if cfg.get("pipeline") is None:
        raise LmdiscError("reproduce.py needs a pipeline: python reproduce.py experiment=reproduce_ptb_small")
    if cfg.jobs < 1:
        raise LmdiscError(f"jobs must be >= 1, got {cfg.jobs}")
    pipeline_cfg = OmegaConf.to_container(cfg.pipeline, resolve=True)
    pipeline_cfg["device"] = list(cfg.device)
    out_dir = Path(cfg.paths.output_dir)
    shared = [f"paths.root_dir={cfg.paths.root_dir}", f"paths.data_dir={cfg.paths.data_dir}"]
    results = Pipeline(pipeline_cfg, out_dir, shared).run(jobs=cfg.jobs)
    command = "python reproduce.py " + " ".join(sys.argv[1:])
    path = write_report(results, out_dir, pipeline_cfg["title"], command.strip())
    print(path.read_text(encoding="utf-8"))
    print(f"\nwritten: {path}")
    return path


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="reproduce")
def main(cfg: DictConfig) -> None:
    reproduce(cfg)


if __name__ == "__main__":
    main()
