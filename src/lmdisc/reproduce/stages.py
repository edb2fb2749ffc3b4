"""The pipeline's stages, each an ordinary `train.py` / `train_disc.py` / `eval.py` run in its own
directory and process. Before a stage runs, its stage.json records what it computes: its overrides
and the sha256 of the checkpoints they name. A stage whose metrics.json exists and whose record
matches is done and skipped, so re-running the same command resumes an interrupted pipeline; a
finished stage whose overrides or input checkpoints changed is cleared and run again, and so is an
unfinished one, except a training stage with the same record and a last.ckpt (the last finished
epoch), which goes on from there. Where a stage runs (paths, device) is not part of the record.
Fine-tuning runs may run `jobs` at a time.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
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

ENTRY_POINTS = {"train": "lmdisc.cli.train", "train_disc": "lmdisc.cli.train_disc", "eval": "lmdisc.cli.eval"}
# overrides naming a checkpoint a stage reads: their files' contents are part of its record
INPUT_KEYS = ("init_from", "ckpt", "lm_ckpt", "disc_ckpt", "loss.discriminator_ckpt")


def stage_record(out_dir: Path) -> dict:
    """A stage's stage.json: its overrides, its input checkpoints' sha256 and, for a training stage,
    the step each resumed run started at, by CSV log version ({} before its first run)."""
    path = Path(out_dir) / "stage.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def csv_log_versions(out_dir: Path) -> list[tuple[int, Path]]:
    """(N, directory) of each csv/version_N a run's CSV logger wrote, in order."""
    found = Path(out_dir).glob("csv/version_*")
    return sorted((int(p.name[8:]), p) for p in found if p.name[8:].isdigit())


@functools.cache
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _identity_change(recorded: dict, identity: dict) -> str:
    """What differs between a stage's recorded identity and its current one, for the log."""
    old, new = recorded.get("overrides") or [], identity["overrides"]
    changes = [f"-{o}" for o in old if o not in new] + [f"+{o}" for o in new if o not in old]
    old_inputs = recorded.get("inputs") or {}
    changes += [
        f"{key} content changed"
        for key, digest in identity["inputs"].items()
        if old_inputs.get(key) != digest
    ]
    return ", ".join(changes) or "recorded by an older lmdisc"


@dataclass
class Stage:
    """One run of an entry point. `overrides` say what it computes (recorded and compared);
    `where` says where it runs (paths, device), passed after them but never compared."""

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
        """What makes two runs of this stage the same: its overrides and the sha256 of the
        checkpoints they name (a re-trained base keeps its path but not its contents)."""
        inputs = {}
        for override in self.overrides:
            key, _, value = override.partition("=")
            if key in INPUT_KEYS and Path(value).is_file():
                info = Path(value).stat()
                inputs[key] = _file_sha256(str(Path(value).resolve()), info.st_size, info.st_mtime_ns)
        return {"overrides": list(self.overrides), "inputs": inputs}

    def matches_record(self) -> bool:
        record = stage_record(self.out_dir)
        return {k: record.get(k) for k in ("overrides", "inputs")} == self.identity()

    @property
    def resume_checkpoint(self) -> Path | None:
        """An interrupted training run's last.ckpt (an epoch end), if it ran as this stage would."""
        if self.entry != "train" or not self.last_checkpoint.is_file():
            return None
        return self.last_checkpoint if self.matches_record() else None

    def write_record(self, resume: Path | None) -> None:
        """Before a run starts: its identity, and if it resumes, the checkpoint's step under the
        CSV version it will log to (the report drops the earlier logs from there on)."""
        resumed_at = stage_record(self.out_dir).get("resumed_at", {}) if resume else {}
        if resume:
            next_version = max((n for n, _ in csv_log_versions(self.out_dir)), default=-1) + 1
            resumed_at[str(next_version)] = load_checkpoint(resume)["global_step"]
        atomic_write_json({**self.identity(), "resumed_at": resumed_at}, self.record_file)

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
    """A finished stage is reused if it ran as this one would, or if its directory predates
    input records (no stage.json, or one without `inputs`): trusted, and the log says so."""
    if not stage.done:
        return False
    if "inputs" not in stage_record(stage.out_dir):
        log(f"[skip] {stage.name}: {stage.metrics_file} exists (written before stage records: not checked)")
        return True
    if stage.matches_record():
        log(f"[skip] {stage.name}: {stage.metrics_file} exists")
        return True
    change = _identity_change(stage_record(stage.out_dir), stage.identity())
    log(f"[clear] {stage.name}: finished with other overrides or inputs ({change}); running it again")
    shutil.rmtree(stage.out_dir)
    return False


def _unfinished(stage: Stage) -> str:
    """Why an unfinished run in a stage's directory cannot be resumed, for the log."""
    if stage.entry != "train":
        return "an unfinished run"
    if not stage.last_checkpoint.is_file():
        return "an unfinished run with no finished epoch"
    change = _identity_change(stage_record(stage.out_dir), stage.identity())
    return f"an unfinished run with other overrides or inputs ({change})"


def run_stage(stage: Stage, log=print, jobs: int = 1) -> dict:
    """Run one stage (or reuse it, see `_reusable`); its output goes to out_dir/stage.log."""
    if _reusable(stage, log):
        return stage.metrics()
    resume = stage.resume_checkpoint
    if resume is None and stage.out_dir.exists():
        log(f"[clear] {stage.name}: {stage.out_dir} holds {_unfinished(stage)}; running it again")
        shutil.rmtree(stage.out_dir)
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
    return stage.metrics()


class _GridProgress:
    """After each stage: how many of the grid are finished and, from the runs timed so far, about
    how long the rest will take at `jobs` at a time."""

    def __init__(self, total: int, jobs: int, log):
        self.total, self.jobs, self.log = total, jobs, log
        self.finished, self.run_seconds = 0, []
        self.lock = threading.Lock()

    def run(self, stage: Stage) -> dict:
        start, was_done = time.monotonic(), stage.done
        metrics = run_stage(stage, self.log, self.jobs)
        with self.lock:
            self.finished += 1
            if not was_done:
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
