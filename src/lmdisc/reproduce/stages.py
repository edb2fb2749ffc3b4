"""The pipeline's stages, each an ordinary `train.py` / `train_disc.py` / `eval.py` run in its own
directory and process. A stage whose metrics.json exists is done and skipped, so re-running the
same command resumes an interrupted pipeline. An interrupted training stage goes on from its
last.ckpt (the last finished epoch) if it ran with the same overrides (recorded in its stage.json),
else it is cleared and run again; any other stage is run again. Fine-tuning runs may run `jobs` at
a time.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from lmdisc.checkpoint import load_checkpoint
from lmdisc.errors import LmdiscError
from lmdisc.io import atomic_write_json

ENTRY_POINTS = {"train": "lmdisc.cli.train", "train_disc": "lmdisc.cli.train_disc", "eval": "lmdisc.cli.eval"}


def stage_record(out_dir: Path) -> dict:
    """A training stage's stage.json: its overrides, and the step each resumed run started at, by
    CSV log version ({} before its first run)."""
    path = Path(out_dir) / "stage.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def csv_log_versions(out_dir: Path) -> list[tuple[int, Path]]:
    """(N, directory) of each csv/version_N a run's CSV logger wrote, in order."""
    found = Path(out_dir).glob("csv/version_*")
    return sorted((int(p.name[8:]), p) for p in found if p.name[8:].isdigit())


@dataclass
class Stage:
    name: str
    entry: str
    overrides: list[str]
    out_dir: Path
    meta: dict = field(default_factory=dict)

    @property
    def metrics_file(self) -> Path:
        return self.out_dir / "metrics.json"

    @property
    def done(self) -> bool:
        return self.metrics_file.is_file()

    def metrics(self) -> dict:
        return json.loads(self.metrics_file.read_text())

    @property
    def record_file(self) -> Path:
        return self.out_dir / "stage.json"

    @property
    def last_checkpoint(self) -> Path:
        return self.out_dir / "checkpoints" / "last.ckpt"

    @property
    def resume_checkpoint(self) -> Path | None:
        """An interrupted training run's last.ckpt (an epoch end), if it ran with these overrides."""
        if self.entry != "train" or not self.last_checkpoint.is_file():
            return None
        return self.last_checkpoint if stage_record(self.out_dir).get("overrides") == self.overrides else None

    def write_record(self, resume: Path | None) -> None:
        """Before a training run starts: its overrides, and if it resumes, the checkpoint's step
        under the CSV version it will log to (the report drops the earlier logs from there on)."""
        resumed_at = stage_record(self.out_dir).get("resumed_at", {}) if resume else {}
        if resume:
            next_version = max((n for n, _ in csv_log_versions(self.out_dir)), default=-1) + 1
            resumed_at[str(next_version)] = load_checkpoint(resume)["global_step"]
        atomic_write_json({"overrides": self.overrides, "resumed_at": resumed_at}, self.record_file)

    def command(self, resume: Path | None = None) -> list[str]:
        return [
            sys.executable,
            "-m",
            ENTRY_POINTS[self.entry],
            *self.overrides,
            *([f"ckpt_path={resume}"] if resume else []),
            f"hydra.run.dir={self.out_dir}",
        ]


def _stage_env(jobs: int) -> dict[str, str]:
    """Split the CPU threads between the stages that run at once (else each takes them all)."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // jobs)))
    return env


def run_stage(stage: Stage, log=print, jobs: int = 1) -> dict:
    """Run one stage (or skip it if done); its output goes to out_dir/stage.log."""
    if stage.done:
        log(f"[skip] {stage.name}: {stage.metrics_file} exists")
        return stage.metrics()
    resume = stage.resume_checkpoint
    if resume is None and stage.entry == "train" and stage.out_dir.exists():
        why = "other overrides" if stage.last_checkpoint.is_file() else "no finished epoch"
        log(f"[clear] {stage.name}: {stage.out_dir} holds an unfinished run with {why}; running it again")
        shutil.rmtree(stage.out_dir)
    stage.out_dir.mkdir(parents=True, exist_ok=True)
    if stage.entry == "train":
        stage.write_record(resume)
    command = stage.command(resume)
    log(f"[{'resume' if resume else 'run '}] {stage.name}: {' '.join(command[2:])}")
    log(f"       progress: {stage.out_dir / 'stage.log'}")
    start = time.perf_counter()
    with open(stage.out_dir / "stage.log", "a" if resume else "w", encoding="utf-8") as out:
        code = subprocess.call(command, stdout=out, stderr=subprocess.STDOUT, env=_stage_env(jobs))
    if code != 0 or not stage.done:
        tail = (stage.out_dir / "stage.log").read_text(encoding="utf-8", errors="replace")[-3000:]
        raise LmdiscError(
            f"stage {stage.name} failed (exit {code}); end of {stage.out_dir / 'stage.log'}:\n{tail}"
        )
    log(f"[done] {stage.name} in {time.perf_counter() - start:.0f} s")
    return stage.metrics()


def run_stages(stages: Sequence[Stage], jobs: int = 1, log=print) -> list[dict]:
    """Run independent stages, `jobs` at a time; the first failure is raised after all finish."""
    if jobs <= 1:
        return [run_stage(s, log) for s in stages]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(run_stage, s, log, jobs) for s in stages]
        return [f.result() for f in futures]


def _fmt(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


@contextlib.contextmanager
def only_pipeline_in(out_dir: Path):
    """Two pipelines in one directory would clear or resume each other's runs: the second is refused."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LmdiscError(
                f"another reproduce.py is running in {out_dir}: wait for it, or give this one another hydra.run.dir"
            ) from None
        yield


class Pipeline:
    """base LM (trained, or given) -> its evaluation -> discriminator -> arms x lrs x seeds."""

    def __init__(self, cfg: Mapping, out_dir: Path, shared: Iterable[str] = ()):
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.shared = list(shared)  # e.g. paths.data_dir / paths.root_dir, passed to every stage

    def _overrides(self, *groups: Iterable[str]) -> list[str]:
        return [*self.shared, *(o for g in groups for o in g)]

    def base_stage(self) -> Stage | None:
        base = self.cfg["base"]
        if base.get("ckpt"):
            return None
        overrides = self._overrides(self.cfg["common"], base["overrides"], self.cfg["device"])
        return Stage("base", "train", overrides, self.out_dir / "base")

    def base_checkpoint(self) -> str:
        given = self.cfg["base"].get("ckpt")
        if given:
            if not Path(given).is_file():
                raise LmdiscError(f"pipeline.base.ckpt={given} does not exist")
            return str(Path(given).resolve())
        return self.base_stage().metrics()["checkpoint"]

    def _data_overrides(self) -> list[str]:
        """The corpus part of `common`: eval.py and train_disc.py read the same data as the LM stages
        (rather than the path recorded in the base checkpoint, which may be another machine's)."""
        return [o for o in self.cfg["common"] if o.split("=", 1)[0].split(".", 1)[0] == "data"]

    def base_eval_stage(self, base_ckpt: str) -> Stage:
        overrides = [
            *self.shared,
            *self._data_overrides(),
            f"ckpt={base_ckpt}",
            f"metrics_file={self.out_dir / 'base_eval' / 'metrics.json'}",
        ]
        return Stage("base_eval", "eval", overrides, self.out_dir / "base_eval")

    def disc_stage(self, base_ckpt: str) -> Stage:
        """Train the discriminator, or, given `pipeline.discriminator.ckpt`, only score that one."""
        given = self.cfg["discriminator"].get("ckpt")
        if given and not Path(given).is_file():
            raise LmdiscError(f"pipeline.discriminator.ckpt={given} does not exist")
        how = [f"disc_ckpt={Path(given).resolve()}"] if given else self.cfg["discriminator"]["overrides"]
        overrides = self._overrides(self._data_overrides(), [f"lm_ckpt={base_ckpt}"], how, self.cfg["device"])
        return Stage("discriminator", "train_disc", overrides, self.out_dir / "discriminator")

    def finetune_stages(self, base_ckpt: str, disc_ckpt: str) -> list[Stage]:
        """Every arm x lr x seed; an arm's overrides may name {disc_ckpt} and {base_ckpt}."""
        ft = self.cfg["finetune"]
        stages = []
        for arm, arm_overrides in ft["arms"].items():
            for lr in ft["lrs"]:
                for seed in ft["seeds"]:
                    name = f"{arm}_lr{_fmt(lr)}_seed{seed}"
                    overrides = self._overrides(
                        self.cfg["common"],
                        ft["overrides"],
                        [f"init_from={base_ckpt}"],
                        (o.format(disc_ckpt=disc_ckpt, base_ckpt=base_ckpt) for o in arm_overrides),
                        [f"optim.optimizer.lr={lr}", f"seed={seed}"],
                        self.cfg["device"],
                    )
                    meta = {"arm": arm, "lr": lr, "seed": seed}
                    stages.append(Stage(name, "train", overrides, self.out_dir / "finetune" / name, meta))
        return stages

    def run(self, jobs: int = 1, log=print) -> dict:
        """Every stage in order; returns what the report needs."""
        with only_pipeline_in(self.out_dir):
            return self._run(jobs, log)

    def _run(self, jobs: int, log) -> dict:
        base = self.base_stage()
        if base is not None:
            run_stage(base, log)
        base_ckpt = self.base_checkpoint()
        base_metrics = run_stage(self.base_eval_stage(base_ckpt), log)
        disc_metrics = run_stage(self.disc_stage(base_ckpt), log)
        stages = self.finetune_stages(base_ckpt, disc_metrics["checkpoint"])
        run_stages(stages, jobs, log)
        return {
            "base_checkpoint": base_ckpt,
            "base_dir": str(base.out_dir) if base is not None else None,
            "base": base_metrics,
            "discriminator": disc_metrics,
            "runs": [{**s.meta, "dir": str(s.out_dir), **s.metrics()} for s in stages],
        }
