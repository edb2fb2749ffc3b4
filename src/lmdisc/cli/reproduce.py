"""`python reproduce.py experiment=reproduce_ptb_small`: the whole rkl_disc pipeline, then results.md
(also `experiment=smollm2_wt2_transfer`, `gpt_wt2_to_ptb`, `reproduce_smollm2_ptb`, `reproduce_smollm2_wt2`).

The slices, the base, its evaluation and the discriminator(s) run one after another; the fine-tuning
grid runs through Hydra's configured launcher (`hydra/launcher=parallel` or `joblib`, `slurm` or
`submitit_slurm`; `jobs=N` for N at a time on this machine), see `lmdisc.reproduce.grid`; then the
extra evaluations, one after another.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from lmdisc.errors import LmdiscError
from lmdisc.reproduce import Pipeline, write_report
from lmdisc.reproduce.grid import GridLauncher, hydra_settings

from . import CONF_DIR
from .common import run_main


def _device_overrides(device) -> list[str]:
    """`device` as a list of overrides; a bare string would otherwise be split into letters."""
    items = OmegaConf.to_container(device) if OmegaConf.is_list(device) else device
    if not isinstance(items, list) or not all(
        isinstance(o, str) and ("=" in o or o.startswith("~")) for o in items
    ):
        raise LmdiscError(
            f"device must be a list of overrides, e.g. 'device=[\"trainer.accelerator=gpu\"]' (quoted), got {items!r}"
        )
    return items


def reproduce(cfg: DictConfig) -> Path:
    """Run (or, with report_only, only report) the pipeline `cfg` describes. `cfg` is reproduce.py's
    config; the grid's launcher comes from its Hydra settings (the app's, or a `hydra` node composed
    with return_hydra_config=True)."""
    if cfg.get("pipeline") is None:
        raise LmdiscError("reproduce.py needs a pipeline: python reproduce.py experiment=reproduce_ptb_small")
    if isinstance(cfg.jobs, bool) or not isinstance(cfg.jobs, int) or cfg.jobs < 1:
        raise LmdiscError(f"jobs must be an integer >= 1 (fine-tuning runs at a time), got {cfg.jobs!r}")
    pipeline_cfg = OmegaConf.to_container(cfg.pipeline, resolve=True)
    pipeline_cfg["device"] = _device_overrides(cfg.device)
    out_dir = Path(cfg.paths.output_dir)
    shared = [f"paths.root_dir={cfg.paths.root_dir}", f"paths.data_dir={cfg.paths.data_dir}"]
    pipeline = Pipeline(pipeline_cfg, out_dir, shared)
    if cfg.get("report_only"):
        results = pipeline.results_so_far()
    else:
        run_grid = GridLauncher(hydra_settings(cfg), cfg.jobs, out_dir)  # checked before anything runs
        results = pipeline.run(run_grid)
    command = shlex.join(["python", "reproduce.py", *sys.argv[1:]])  # quoted so it can be pasted back
    path = write_report(results, out_dir, pipeline_cfg["title"], command)
    print(path.read_text(encoding="utf-8"))
    print(f"\nwritten: {path}")
    return path


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="reproduce")
def main(cfg: DictConfig) -> None:
    run_main(reproduce, cfg)


if __name__ == "__main__":
    main()
