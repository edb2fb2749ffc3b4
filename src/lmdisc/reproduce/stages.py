"""The pipeline's stages, each an ordinary `train.py` / `train_disc.py` / `eval.py` run in its own
directory and process. Before a stage runs, its stage.json records what it computes (its
overrides' identity, see `identity.py`). A stage whose metrics.json exists and whose record
matches is done and reused, so re-running the same command resumes an interrupted pipeline; an
interrupted training stage with a matching record goes on from its last.ckpt (the last finished
epoch). A stage whose record differs is run again, its old directory moved aside rather than
deleted. Where a stage runs (`where`: paths, device) is not part of the record.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from lmdisc.checkpoint import load_checkpoint
from lmdisc.errors import LmdiscError
from lmdisc.io import atomic_write_json

from .identity import describe_change, override_identity

ENTRY_POINTS = {"train": "lmdisc.cli.train", "train_disc": "lmdisc.cli.train_disc", "eval": "lmdisc.cli.eval"}


def stage_record(out_dir: Path) -> dict:
    """A stage's stage.json: its overrides as given, their `identity` and, for a training stage,
    the step each resumed run started at, by CSV log version ({} before its first run)."""
    path = Path(out_dir) / "stage.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def csv_log_versions(out_dir: Path) -> list[tuple[int, Path]]:
    """(N, directory) of each csv/version_N a run's CSV logger wrote, in order."""
    found = Path(out_dir).glob("csv/version_*")
    return sorted((int(p.name[8:]), p) for p in found if p.name[8:].isdigit())


@dataclass
class Stage:
    """One run of an entry point. `overrides` say what it computes (recorded and compared);
    `where` says where it runs (paths, device, output files), passed after them, never compared."""

    name: str
    entry: str
    overrides: list[str]
    out_dir: Path
    meta: dict = field(default_factory=dict)
    where: list[str] = field(default_factory=list)

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

    def identity(self) -> dict:
        return override_identity(self.overrides)

    def output_checkpoint(self) -> str:
        """The checkpoint a finished stage reports in its metrics.json, found in the stage's own
        checkpoints/ if the pipeline directory has been moved since (the path recorded is absolute)."""
        recorded = Path(self.metrics()["checkpoint"])
        here = self.out_dir / "checkpoints" / recorded.name
        return str(here if not recorded.is_file() and here.is_file() else recorded)

    @property
    def matches_record(self) -> bool:
        """Its directory ran as this stage would (or predates identity records, so is trusted)."""
        return self.predates_records or self.record_change() is None

    @property
    def finished_as_planned(self) -> bool:
        return self.done and self.matches_record

    @property
    def predates_records(self) -> bool:
        """A directory written before stages recorded an identity: trusted as it is (and logged so)."""
        return "identity" not in stage_record(self.out_dir)

    def record_change(self) -> str | None:
        """None if the recorded identity is this stage's, else how it differs (for the log)."""
        recorded = stage_record(self.out_dir).get("identity")
        identity = self.identity()
        return None if recorded == identity else describe_change(recorded or {}, identity)

    @property
    def resume_checkpoint(self) -> Path | None:
        """An interrupted training run's last.ckpt (an epoch end), if it ran as this stage would."""
        if self.entry != "train" or not self.last_checkpoint.is_file():
            return None
        return self.last_checkpoint if self.matches_record else None

    def write_record(self, resume: Path | None) -> None:
        """Before a run starts: its identity, and if it resumes, the checkpoint's step under the
        CSV version it will log to (the report drops the earlier logs from there on)."""
        resumed_at = stage_record(self.out_dir).get("resumed_at", {}) if resume else {}
        if resume:
            next_version = max((n for n, _ in csv_log_versions(self.out_dir)), default=-1) + 1
            resumed_at[str(next_version)] = load_checkpoint(resume)["global_step"]
        record = {"overrides": list(self.overrides), "identity": self.identity(), "resumed_at": resumed_at}
        atomic_write_json(record, self.record_file)

    def command(self, resume: Path | None = None) -> list[str]:
        return [
            sys.executable,
            "-m",
            ENTRY_POINTS[self.entry],
            *self.overrides,
            *self.where,
            *([f"ckpt_path={resume}"] if resume else []),
            f"hydra.run.dir={self.out_dir}",
        ]


def _stage_env(jobs: int) -> dict[str, str]:
    """Split the CPU threads between the stages that run at once (else each takes them all)."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // jobs)))
    return env


def _reusable(stage: Stage, log) -> bool:
    """A finished stage is reused if it ran as this one would, or if it predates records."""
    if not stage.done:
        return False
    if stage.predates_records:
        log(f"[skip] {stage.name}: {stage.metrics_file} exists (written before stage records: not checked)")
        return True
    change = stage.record_change()
    if change is None:
        log(f"[skip] {stage.name}: {stage.metrics_file} exists")
        return True
    log(f"[again] {stage.name}: it finished with other overrides or inputs ({change})")
    return False


def _unfinished(stage: Stage) -> str:
    """Why a run in a stage's directory is not reused or resumed, for the log."""
    if stage.done:
        return "a finished run with other overrides or inputs"
    if stage.entry == "train" and not stage.last_checkpoint.is_file():
        return "an unfinished run with no finished epoch"
    if stage.entry == "train":
        return f"an unfinished run with other overrides or inputs ({stage.record_change()})"
    return "an unfinished run"


def _set_aside(stage: Stage, log) -> None:
    """Clear a stage's directory for a new run. A finished run or a checkpoint is moved aside
    (`<dir>.replaced-<time>`), never deleted: an hours-long base is not lost to a typo."""
    why = _unfinished(stage)
    if stage.done or any(stage.out_dir.glob("checkpoints/*.ckpt")):
        aside = stage.out_dir.with_name(f"{stage.out_dir.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
        stage.out_dir.rename(aside)
        log(f"[clear] {stage.name}: {stage.out_dir} held {why}; moved to {aside}, running it again")
    else:
        shutil.rmtree(stage.out_dir)
        log(f"[clear] {stage.name}: {stage.out_dir} held {why}; running it again")


def run_stage(stage: Stage, log=print, jobs: int = 1) -> dict:
    """Run one stage (or reuse it, see `_reusable`); its output goes to out_dir/stage.log."""
    return _run_stage(stage, log, jobs)[0]


def _run_stage(stage: Stage, log, jobs: int) -> tuple[dict, bool]:
    """`run_stage`, also saying whether the stage ran (False: reused)."""
    if _reusable(stage, log):
        return stage.metrics(), False
    resume = None if stage.done else stage.resume_checkpoint
    if resume is not None and stage.predates_records:
        log(f"[resume] {stage.name}: its stage.json predates identity records: not checked")
    if resume is None and stage.out_dir.exists():
        _set_aside(stage, log)
    stage.out_dir.mkdir(parents=True, exist_ok=True)
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
    return stage.metrics(), True


class _GridProgress:
    """After each stage: how many of the grid are finished and, from the runs timed so far, about
    how long the rest will take at `jobs` at a time."""

    def __init__(self, total: int, jobs: int, log):
        self.total, self.jobs, self.log = total, max(jobs, 1), log
        self.finished, self.run_seconds = 0, []
        self.lock = threading.Lock()

    def run(self, stage: Stage) -> dict:
        start = time.monotonic()
        metrics, ran = _run_stage(stage, self.log, self.jobs)
        with self.lock:
            self.finished += 1
            if ran:  # a resumed run is timed too: the estimate errs low until fresh runs come in
                self.run_seconds.append(time.monotonic() - start)
            left = self.total - self.finished
            line = f"[grid] {self.finished}/{self.total} finished"
            if self.run_seconds and left:
                mean = sum(self.run_seconds) / len(self.run_seconds)
                line += f", ~{mean * left / self.jobs / 60:.0f} min left ({mean / 60:.1f} min a run, {self.jobs} at a time)"
            self.log(line)
        return metrics


def run_stages(stages: Sequence[Stage], jobs: int = 1, log=print) -> list[dict]:
    """Run independent stages, `jobs` at a time; the first failure is raised after all finish."""
    progress = _GridProgress(len(stages), jobs, log)
    if jobs <= 1:
        return [progress.run(s) for s in stages]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(progress.run, s) for s in stages]
        return [f.result() for f in futures]


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
