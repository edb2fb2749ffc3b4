"""The fine-tuning grid as a Hydra multirun, through the launcher reproduce.py is configured with:
`basic` (one run after another, in this process), joblib (`hydra/launcher=parallel` or `joblib`:
`n_jobs` runs at a time on this machine, each in a loky worker process) or submitit
(`hydra/launcher=slurm` or `submitit_slurm`: each run a SLURM job).

Each grid run is one job of that launcher: its task function (`GridJob`) runs one `Stage`, with
the stage's own skip / resume / re-run logic, as a subprocess (so the stage's own Hydra run never
sees the launcher's or the worker's Hydra state). The stages are built once, here, and travel to
the workers with the task function; a job's overrides are reproduce.py's own plus
`+grid_run=<stage name>`, as Hydra's multirun would give them, so its `.hydra/` records say which
pipeline it belongs to. The launcher's own files (`.hydra/`, job logs, submitit's) go to
`<pipeline>/launcher/<stage name>/`, with a copy of the stage's metrics.json for Hydra callbacks
that summarise a multirun from its job directories; a stage's outputs stay in its stable directory.

`jobs=N` is how many runs share this machine at once: with the default `basic` launcher it runs
the grid through joblib with `n_jobs=N`. A job spreads over the GPUs it sees (`grid_device`),
unless the stage pins a device; without GPUs, the runs at once split the CPU threads.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from hydra.types import HydraContext, RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lmdisc.cli import CONF_DIR
from lmdisc.errors import LmdiscError
from lmdisc.io import atomic_write_json

from .identity import fresh_global_hydra
from .stages import Stage, timed_run_stage, usable_cpus

_GPU_ACCELERATORS = ("gpu", "cuda", "auto")
_ONE_GPU_TRAINERS = ("default", "gpu")  # conf/trainer configs that run on one device of any kind


def grid_device(job_index: int, n_gpus: int) -> list[str]:
    """Grid job k runs on GPU k % n_gpus (so `jobs` runs at a time spread over the GPUs); no GPU:
    no override (the CPU threads are split instead, `stages.stage_env`)."""
    if n_gpus <= 0:
        return []
    return ["trainer.accelerator=gpu", f"trainer.devices=[{job_index % n_gpus}]"]


def pins_device(overrides: Sequence[str]) -> bool:
    """Whether the stage's overrides choose its device themselves (trainer.devices, an accelerator
    other than a GPU, or a trainer config other than one GPU, e.g. trainer=cpu or trainer=ddp):
    then the grid leaves it as given."""
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if (
            key == "trainer.devices"
            or (key == "trainer.accelerator" and value not in _GPU_ACCELERATORS)
            or (key == "trainer" and value not in _ONE_GPU_TRAINERS)
        ):
            return True
    return False


def _visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@dataclass
class GridJob:
    """Hydra's task function for one grid run: the stage named by the job's `grid_run`, on GPU
    (job number % GPUs seen by the job). After it, how many of the grid are finished and, from
    the runs timed so far, about how long the rest will take (every job, in any process or on any
    node, leaves a line in `progress_dir`: no shared memory or lock)."""

    stages: dict[str, Stage]
    share: int  # runs sharing this machine at once (splits the CPU threads)
    at_once: int  # runs at once in all (for the time estimate)
    progress_dir: Path

    def __call__(self, cfg: DictConfig) -> dict:
        stage = self.stages[cfg.grid_run]
        gpus = 0 if pins_device([*stage.overrides, *stage.where]) else _visible_gpus()
        device = grid_device(HydraConfig.get().job.num, gpus)
        metrics, seconds = timed_run_stage(replace(stage, where=[*stage.where, *device]), print, self.share)
        atomic_write_json(metrics, Path(HydraConfig.get().runtime.output_dir) / "metrics.json")
        atomic_write_json({"seconds": seconds}, self.progress_dir / f"{stage.name}.json")
        print(self.progress_line(), flush=True)
        return {"stage": stage.name, "seconds": seconds}

    def progress_line(self) -> str:
        finished = [
            json.loads(path.read_text())
            for name in self.stages
            if (path := self.progress_dir / f"{name}.json").is_file()
        ]
        timed = [f["seconds"] for f in finished if f["seconds"] is not None]
        left = len(self.stages) - len(finished)
        line = f"[grid] {len(finished)}/{len(self.stages)} finished"
        if timed and left:  # a resumed run is timed too: the estimate errs low until fresh runs come in
            mean = statistics.fmean(timed)
            line += f", ~{mean * left / self.at_once / 60:.0f} min left ({mean / 60:.1f} min a run, {self.at_once} at a time)"
        return line


def _quoted(value: str) -> str:
    """A value for a Hydra override, whatever characters a path holds."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _launcher_kind(hydra_cfg: DictConfig) -> str:
    target = str(OmegaConf.select(hydra_cfg, "launcher._target_", default=""))
    names = {
        "BasicLauncher": "basic",
        "JoblibLauncher": "joblib",
        "SlurmLauncher": "submitit_slurm",
        "LocalLauncher": "submitit_local",
    }
    return names.get(target.rsplit(".", 1)[-1], target)


def plan_launch(hydra_cfg: DictConfig, jobs: int) -> tuple[list[str], int, int, str]:
    """(hydra overrides added, runs sharing this machine at once, runs at once in all, what the log
    says) for `jobs` runs at a time under the configured launcher (a grid may have fewer runs)."""
    kind = _launcher_kind(hydra_cfg)
    given = [o for o in hydra_cfg.overrides.hydra if o.startswith("hydra.launcher.n_jobs=")]
    if kind == "basic" and jobs == 1:
        return [], 1, 1, "Hydra's basic launcher, one run at a time"
    if kind == "basic":
        added = ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}"]
        return added, jobs, jobs, f"jobs={jobs}: Hydra's joblib launcher, n_jobs={jobs}"
    if kind == "joblib":
        if jobs > 1 and given and int(hydra_cfg.launcher.n_jobs) != jobs:
            raise LmdiscError(f"jobs={jobs} and {given[-1]} disagree: give one of them")
        n_jobs = jobs if jobs > 1 else int(hydra_cfg.launcher.n_jobs)
        if n_jobs < 0:  # joblib's convention: -1 is every CPU, -2 all but one, ...
            n_jobs = max(1, usable_cpus() + 1 + n_jobs)
        return (
            [f"hydra.launcher.n_jobs={n_jobs}"],
            n_jobs,
            n_jobs,
            f"Hydra's joblib launcher, n_jobs={n_jobs}",
        )
    if jobs > 1:
        raise LmdiscError(
            f"jobs={jobs} splits one machine between runs; with hydra/launcher={kind} each run has its "
            "own allocation: set how many run at once in the launcher (e.g. hydra.launcher.array_parallelism)"
        )
    at_once = OmegaConf.select(hydra_cfg, "launcher.array_parallelism", default=None)
    return [], 1, int(at_once) if at_once else 0, f"Hydra's {kind} launcher"


def hydra_settings(cfg: DictConfig) -> DictConfig:
    """reproduce.py's Hydra settings: the app's (HydraConfig), or those composed with the config
    (compose(..., return_hydra_config=True), as in the tests)."""
    if "hydra" in cfg:
        return cfg.hydra
    if HydraConfig.initialized():
        return HydraConfig.get()
    raise LmdiscError(
        "the fine-tuning grid needs reproduce.py's Hydra settings (its launcher): run reproduce.py, or "
        "compose its config with return_hydra_config=True"
    )


def _master_config(hydra_cfg: DictConfig, added: list[str], sweep_dir: Path):
    """reproduce.py's config composed for a multirun, as `python reproduce.py -m ...` would
    compose it, with the launcher's files under the pipeline; and the loader that composed it
    (every job re-composes its own config with it)."""
    replaced = {o.partition("=")[0] for o in added}
    overrides = [
        *hydra_cfg.overrides.task,
        *(o for o in hydra_cfg.overrides.hydra if o.partition("=")[0] not in replaced),
        *added,
        f"hydra.sweep.dir={_quoted(str(sweep_dir))}",
        "hydra.sweep.subdir=${grid_run}",
    ]
    if GlobalHydra.instance().is_initialized():  # inside reproduce.py's own app
        loader = GlobalHydra.instance().config_loader()
    else:
        with fresh_global_hydra(CONF_DIR):
            loader = GlobalHydra.instance().config_loader()
    config = loader.load_configuration(hydra_cfg.job.config_name, overrides, RunMode.MULTIRUN)
    return config, loader


class GridLauncher:
    """Runs the grid's stages through the configured launcher (`Pipeline.run`'s `run_grid`). Made,
    and so checked, before the pipeline runs anything: a launcher config that does not resolve is
    refused before the base trains for an hour."""

    def __init__(self, hydra_cfg: DictConfig, jobs: int, pipeline_dir: Path, log=print):
        added, self.share, self.at_once, self.how = plan_launch(hydra_cfg, jobs)
        self.sweep_dir = Path(pipeline_dir) / "launcher"
        self.master, self.loader = _master_config(hydra_cfg, added, self.sweep_dir)
        try:
            OmegaConf.to_container(self.master.hydra.launcher, resolve=True)
        except OmegaConfBaseException as err:
            raise LmdiscError(
                f"the launcher's config (hydra.launcher) does not resolve for reproduce.py: {err}"
            ) from None
        self.task_overrides = list(hydra_cfg.overrides.task)
        self.config_name = hydra_cfg.job.config_name
        self.log = log

    def __call__(self, stages: list[Stage]) -> None:
        """Run every grid stage, one job each; failures are raised after all have ended."""
        from hydra._internal.callbacks import Callbacks  # what Hydra's own multirun hands a launcher

        if not stages:
            return
        share, at_once = min(self.share, len(stages)), min(self.at_once or len(stages), len(stages))
        progress_dir = self.sweep_dir / "progress"
        for old in progress_dir.glob("*.json"):  # this launch's progress only
            old.unlink()
        progress_dir.mkdir(parents=True, exist_ok=True)
        task = GridJob({s.name: s for s in stages}, share, at_once, progress_dir)
        self.log(f"[grid] {len(stages)} runs through {self.how}; launcher files: {self.sweep_dir}")
        context = HydraContext(config_loader=self.loader, callbacks=Callbacks(self.master))
        launcher = Plugins.instance().instantiate_launcher(
            hydra_context=context, task_function=task, config=self.master
        )
        context.callbacks.on_multirun_start(config=self.master, config_name=self.config_name)
        jobs = [[*self.task_overrides, f"+grid_run={s.name}"] for s in stages]
        returns = launcher.launch(jobs, initial_job_idx=0)
        context.callbacks.on_multirun_end(config=self.master, config_name=self.config_name)
        self._report(stages, returns)

    def _report(self, stages: list[Stage], returns) -> None:
        failed = [(s, r) for s, r in zip(stages, returns) if r.status != JobStatus.COMPLETED]
        ran = [r.return_value["seconds"] for r in returns if r.status == JobStatus.COMPLETED]
        timed = [s for s in ran if s is not None]
        summary = (
            f"[grid] {len(ran)}/{len(stages)} finished: {len(timed)} ran, {len(ran) - len(timed)} reused"
        )
        self.log(summary + (f" ({statistics.fmean(timed) / 60:.1f} min a run)" if timed else ""))
        if failed:
            names = ", ".join(s.name for s, _ in failed)
            raise LmdiscError(
                f"{len(failed)} of {len(stages)} grid runs failed ({names}); the first:\n{failed[0][1]._return_value}"
            )
