"""The pipeline's stages, each an ordinary `train.py` / `train_disc.py` / `eval.py` run in its own
directory and process (so a stage never inherits the pipeline's Hydra state, whatever launched
it). Before a stage runs, its stage.json records what it computes (its resolved identity, see
`identity.py`). A stage whose metrics.json exists and whose record matches is done and reused, so
re-running the same command resumes an interrupted pipeline; an interrupted training stage with
a matching record goes on from its last.ckpt (the last finished epoch). A stage whose record
differs is run again, its old directory moved aside rather than deleted. A record written before
resolved identities is trusted as it is, and the log says so. After each run, resources.json
records the stage process's peak resident memory, sampled each second (the host's: a GPU's own
memory is not seen here).
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
from dataclasses import dataclass, field
from pathlib import Path

from lmdisc.checkpoint import load_checkpoint
from lmdisc.cli import CONF_DIR
from lmdisc.errors import LmdiscError
from lmdisc.io import atomic_write_json

from .identity import canonical_identity, describe_change, resolved_identity
from .run_logs import next_log_index

ENTRY_POINTS = {"train": "lmdisc.cli.train", "train_disc": "lmdisc.cli.train_disc", "eval": "lmdisc.cli.eval"}
IDENTITY_KEY = "resolved_identity"


def stage_record(out_dir: str | Path) -> dict:
    """A stage's stage.json: its overrides as given, its `resolved_identity` and, for a training
    stage, the step each resumed run started at, by log index ({} before its first run)."""
    path = Path(out_dir) / "stage.json"
    return json.loads(path.read_text()) if path.is_file() else {}


@dataclass
class Stage:
    """One run of an entry point. `overrides` say what it computes; `where` says where it runs
    (paths, device, output files), passed after them. Both are composed into its identity, from
    which the keys that do not change what it computes are dropped (`identity.IGNORED_KEYS`)."""

    name: str
    entry: str
    overrides: list[str]
    out_dir: Path
    meta: dict = field(default_factory=dict)
    where: list[str] = field(default_factory=list)
    # the file a finished run leaves (eval.py's score_file writes <split>.scores.summary.json)
    metrics_name: str = "metrics.json"
    _identities: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def metrics_file(self) -> Path:
        return self.out_dir / self.metrics_name

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
        """Composed once per spelling of the overrides (a stage is checked several times a run)."""
        key = (tuple(self.overrides), tuple(self.where))
        if key not in self._identities:
            self._identities[key] = resolved_identity(self.entry, [*self.overrides, *self.where], CONF_DIR)
        return self._identities[key]

    def output_checkpoint(self) -> str:
        """The checkpoint a finished stage reports in its metrics.json, found in the stage's own
        checkpoints/ if the pipeline directory has been moved since (the path recorded is absolute);
        a run with evaluate=false records none: its best.ckpt (else last.ckpt)."""
        if "checkpoint" not in self.metrics():
            best = self.out_dir / "checkpoints" / "best.ckpt"
            return str(best if best.is_file() else self.last_checkpoint)
        recorded = Path(self.metrics()["checkpoint"])
        here = self.out_dir / "checkpoints" / recorded.name
        return str(here if not recorded.is_file() and here.is_file() else recorded)

    @property
    def matches_record(self) -> bool:
        """Its directory ran as this stage would (or predates resolved identities, so is trusted)."""
        return self.predates_identity or self.record_change() is None

    @property
    def finished_as_planned(self) -> bool:
        return self.done and self.matches_record

    @property
    def predates_identity(self) -> bool:
        """A directory written before stages recorded a resolved identity (none, or one made of
        override strings): trusted as it is, and logged so."""
        return IDENTITY_KEY not in stage_record(self.out_dir)

    def record_change(self) -> str | None:
        """None if the recorded identity is this stage's, else how it differs (for the log)."""
        recorded = stage_record(self.out_dir).get(IDENTITY_KEY)
        if recorded is not None:  # keys ignored or renamed since it was recorded do not count
            recorded = canonical_identity(self.entry, recorded)
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
        log index it will log to (the report drops the earlier logs from there on)."""
        resumed_at = stage_record(self.out_dir).get("resumed_at", {}) if resume else {}
        if resume:
            resumed_at[str(next_log_index(self.out_dir))] = load_checkpoint(resume)["global_step"]
        record = {
            "overrides": list(self.overrides),
            "where": list(self.where),
            IDENTITY_KEY: self.identity(),
            "resumed_at": resumed_at,
        }
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


def usable_cpus() -> int:
    """The CPUs this process may run on (a SLURM or container allotment), not the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def stage_env(share: int) -> dict[str, str]:
    """Split the CPU threads between the `share` stages that run at once on this machine (else
    each takes them all); a thread count the user (or joblib's worker) set is kept."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, usable_cpus() // max(share, 1))))
    return env


def _reusable(stage: Stage, log) -> bool:
    """A finished stage is reused if it ran as this one would, or if it predates identities."""
    if not stage.done:
        return False
    if stage.predates_identity:
        log(
            f"[skip] {stage.name}: {stage.metrics_file} exists (its stage.json predates resolved identities: not checked)"
        )
        return True
    change = stage.record_change()
    if change is None:
        log(f"[skip] {stage.name}: {stage.metrics_file} exists")
        return True
    log(f"[again] {stage.name}: it finished with another config or inputs ({change})")
    return False


def _unfinished(stage: Stage) -> str:
    """Why a run in a stage's directory is not reused or resumed, for the log."""
    if stage.done:
        return "a finished run with another config or inputs"
    if stage.entry == "train" and not stage.last_checkpoint.is_file():
        return "an unfinished run with no finished epoch"
    if stage.entry == "train":
        return f"an unfinished run with another config or inputs ({stage.record_change()})"
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


def run_stage(stage: Stage, log=print, share: int = 1) -> dict:
    """Run one stage (or reuse it, see `_reusable`); its output goes to out_dir/stage.log."""
    return timed_run_stage(stage, log, share)[0]


def timed_run_stage(stage: Stage, log=print, share: int = 1) -> tuple[dict, float | None]:
    """`run_stage`, also saying how long the stage ran (None: reused). `share`: how many stages
    run at once on this machine, which split its CPU threads."""
    if _reusable(stage, log):
        return stage.metrics(), None
    resume = None if stage.done else stage.resume_checkpoint
    if resume is not None and stage.predates_identity:
        log(f"[resume] {stage.name}: its stage.json predates resolved identities: not checked")
    if resume is None and stage.out_dir.exists():
        _set_aside(stage, log)
    stage.out_dir.mkdir(parents=True, exist_ok=True)
    stage.write_record(resume)
    command = stage.command(resume)
    log(f"[{'resume' if resume else 'run '}] {stage.name}: {' '.join(command[2:])}")
    log(f"       progress: {stage.out_dir / 'stage.log'}")
    start = time.perf_counter()
    with open(stage.out_dir / "stage.log", "a" if resume else "w", encoding="utf-8") as out:
        code, peak = _call(command, out, stage_env(share))
    atomic_write_json(
        {"peak_rss_bytes": peak, "resumed": resume is not None}, stage.out_dir / "resources.json"
    )
    if code != 0 or not stage.done:
        tail = (stage.out_dir / "stage.log").read_text(encoding="utf-8", errors="replace")[-3000:]
        raise LmdiscError(
            f"stage {stage.name} failed (exit {code}); end of {stage.out_dir / 'stage.log'}:\n{tail}"
        )
    seconds = time.perf_counter() - start
    log(f"[done] {stage.name} in {seconds:.0f} s")
    return stage.metrics(), seconds


def _call(command: list[str], out, env: dict, every_s: float = 1.0) -> tuple[int, int | None]:
    """subprocess.call, also returning the process's peak resident memory in bytes: its VmHWM (the
    high-water mark of its own address space), read every `every_s` while it runs, so a peak in its
    last second may be missed. (getrusage's ru_maxrss would not do: a child's starts at this
    process's size when it is forked.) None where /proc is not, or for a run shorter than `every_s`."""
    peak = None
    with subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env) as process:
        status = Path(f"/proc/{process.pid}/status")
        try:
            while True:
                try:
                    return process.wait(timeout=every_s), peak
                except subprocess.TimeoutExpired:
                    peak = _high_water_mark(status) or peak
        except BaseException:  # an interrupt: stop the stage too, as subprocess.call does
            process.kill()
            process.wait()
            raise


def _high_water_mark(status: Path) -> int | None:
    try:
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def resources(out_dir: str | Path) -> dict:
    """A stage's resources.json ({} for a run from before it was written)."""
    path = Path(out_dir) / "resources.json"
    return json.loads(path.read_text()) if path.is_file() else {}


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
