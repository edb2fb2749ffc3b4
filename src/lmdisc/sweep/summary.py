"""summary.md and summary.csv in a multirun's sweep directory: one row per job, its overrides and
the results its metrics.json holds, sorted by val/ppl.

A Hydra callback (registered in conf/hydra/default.yaml), so it serves every sweeper and launcher:
it rewrites the summary as each job ends (in the job's process, under a file lock, so parallel jobs
do not lose each other's rows, and a sweep that stops at a failed job still leaves one) and once
more when the multirun ends. Jobs of an Optuna sweep (`lmdisc.sweep.optuna_sweeper`) also get
their trial's number and state from the study's journal.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from lmdisc.io import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

# (metrics.json key, column title in summary.md, format there)
COLUMNS = (
    ("val/ppl", "val/ppl", ".2f"),
    ("test/ppl", "test/ppl", ".2f"),
    ("val/word_ppl", "val/word_ppl", ".2f"),
    ("test/word_ppl", "test/word_ppl", ".2f"),
    ("train_tokens_per_s", "tokens/s", ",.0f"),
    ("fit_seconds", "fit s", ".1f"),
)
# columns shown only when some job has them
OPTIONAL = ("val/word_ppl", "test/word_ppl")
# the sweeper's own per-job bookkeeping, not a choice of the sweep
HIDDEN_OVERRIDES = ("callbacks.optuna_pruning.",)
JOB_STATUS_FILE = "job_status.json"
SUMMARY_FILES = ("summary.md", "summary.csv")


@dataclass
class JobRow:
    directory: str  # relative to the sweep directory
    num: int | None
    overrides: list[str]
    metrics: dict[str, Any] | None
    failure: str | None = None  # the job's exception, when it raised
    trial: int | None = None
    trial_state: str | None = None
    visible_overrides: list[str] = field(default_factory=list)  # without the sweeper's bookkeeping
    shown_overrides: list[str] = field(default_factory=list)  # without those every job shares

    @property
    def state(self) -> str:
        if self.trial_state is not None:
            return "failed" if self.trial_state == "fail" else self.trial_state
        if self.failure is not None:
            return "failed"
        return "complete" if self.metrics is not None else "no metrics.json"

    @property
    def note(self) -> str:
        if self.failure is not None:
            return self.failure
        if self.metrics is None:
            return "no metrics.json (failed, running or interrupted)"
        return ""

    def value(self, key: str) -> float | None:
        value = (self.metrics or {}).get(key)
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def collect_jobs(sweep_dir: Path) -> list[JobRow]:
    """Every job directory under `sweep_dir` (one with Hydra's `.hydra/overrides.yaml`)."""
    rows = []
    for overrides_file in sorted(sweep_dir.rglob(".hydra/overrides.yaml")):
        job_dir = overrides_file.parent.parent
        if job_dir == sweep_dir:
            continue
        rows.append(
            JobRow(
                directory=str(job_dir.relative_to(sweep_dir)),
                num=_job_num(job_dir),
                overrides=[str(o) for o in yaml.safe_load(overrides_file.read_text()) or []],
                metrics=_read_json(job_dir / "metrics.json"),
                failure=(_read_json(job_dir / JOB_STATUS_FILE) or {}).get("error"),
            )
        )
    return rows


def add_trials(rows: list[JobRow], trials: dict[int, Any]) -> None:
    """Each job's Optuna trial (`lmdisc.sweep.study.trials_by_job`), by job number."""
    for row in rows:
        trial = trials.get(row.num)
        if trial is not None:
            row.trial, row.trial_state = trial.number, trial.state.name.lower()


def write_summary(sweep_dir: Path, rows: list[JobRow]) -> tuple[Path, Path]:
    """summary.md and summary.csv, sorted by val/ppl (jobs without one last)."""
    rows = sorted(rows, key=_sort_key)
    shared = _split_overrides(rows)
    keys = [k for k, _, _ in COLUMNS if k not in OPTIONAL or any(r.value(k) is not None for r in rows)]
    has_trials = any(r.trial is not None for r in rows)
    md, csv_path = (sweep_dir / name for name in SUMMARY_FILES)
    atomic_write_text(_markdown(sweep_dir, rows, shared, keys, has_trials), md)
    atomic_write_text(_csv(rows, keys, has_trials), csv_path)
    return md, csv_path


def summarise(
    sweep_dir: Path, storage: str | None = None, study_name: str | None = None
) -> tuple[Path, Path]:
    """Collect the jobs, add their Optuna trials when the sweep keeps a study, write the summary;
    under a lock, so that of two jobs ending together the later one writes both rows."""
    sweep_dir = Path(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with open(sweep_dir / ".summary.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rows = collect_jobs(sweep_dir)
        if storage and study_name and Path(storage).is_file():
            from lmdisc.sweep.study import trials_by_job  # Optuna only for Optuna sweeps

            try:
                add_trials(rows, trials_by_job(storage, study_name))
            except KeyError:
                log.warning("No study %r in %s: the summary has no trial states", study_name, storage)
        return write_summary(sweep_dir, rows)


class SweepSummary(Callback):
    """Hydra callback: `hydra.callbacks.sweep_summary` in conf/hydra/default.yaml."""

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if OmegaConf.select(config, "hydra.mode") != RunMode.MULTIRUN:
            return
        job_dir = Path(config.hydra.runtime.output_dir)
        status: dict[str, Any] = {"status": job_return.status.name.lower()}
        if job_return.status == JobStatus.FAILED:
            error = job_return._return_value
            status["error"] = f"{type(error).__name__}: {error}"
        atomic_write_json(status, job_dir / JOB_STATUS_FILE)
        self._summarise(config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        md, _ = self._summarise(config)
        log.info("Summary of the sweep: %s", md)

    @staticmethod
    def _summarise(config: DictConfig) -> tuple[Path, Path]:
        return summarise(
            Path(config.hydra.sweep.dir),
            OmegaConf.select(config, "hydra.sweeper.storage"),
            OmegaConf.select(config, "hydra.sweeper.study_name"),
        )


def _job_num(job_dir: Path) -> int | None:
    try:
        return int(yaml.safe_load((job_dir / ".hydra" / "hydra.yaml").read_text())["hydra"]["job"]["num"])
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):
        return None


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _sort_key(row: JobRow) -> tuple:
    value = row.value("val/ppl")
    missing = value is None or math.isnan(value)
    return (
        missing,
        value if not missing else 0.0,
        row.num if row.num is not None else math.inf,
        row.directory,
    )


def _split_overrides(rows: list[JobRow]) -> list[str]:
    """The overrides every job shares (listed once), leaving each row the ones that vary."""
    for row in rows:
        row.visible_overrides = [o for o in row.overrides if not o.lstrip("+~").startswith(HIDDEN_OVERRIDES)]
    shared = set.intersection(*(set(r.visible_overrides) for r in rows)) if len(rows) > 1 else set()
    for row in rows:
        row.shown_overrides = [o for o in row.visible_overrides if o not in shared]
    return [o for o in rows[0].visible_overrides if o in shared] if rows else []


def _markdown(
    sweep_dir: Path, rows: list[JobRow], shared: list[str], keys: list[str], has_trials: bool
) -> str:
    titles = {k: title for k, title, _ in COLUMNS}
    formats = {k: fmt for k, _, fmt in COLUMNS}
    header = [
        "job",
        *(["trial"] if has_trials else []),
        "overrides",
        "state",
        *(titles[k] for k in keys),
        "note",
    ]
    lines = [
        f"# Sweep summary: {sweep_dir}",
        "",
        f"{len(rows)} jobs, sorted by val/ppl (from each job's metrics.json).",
    ]
    if shared:
        lines.append("Every job: " + " ".join(f"`{o}`" for o in shared))
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [
            row.directory,
            *([_cell(row.trial)] if has_trials else []),
            " ".join(f"`{o}`" for o in row.shown_overrides),
            row.state,
            *(_cell(row.value(k), formats[k]) for k in keys),
            row.note.replace("|", "\\|").replace("\n", " "),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _csv(rows: list[JobRow], keys: list[str], has_trials: bool) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["job", *(["trial"] if has_trials else []), "overrides", "state", *keys, "note"])
    for row in rows:
        writer.writerow(
            [
                row.directory,
                *([_cell(row.trial)] if has_trials else []),
                " ".join(row.visible_overrides),
                row.state,
                *("" if row.value(k) is None else repr(row.value(k)) for k in keys),
                row.note,
            ]
        )
    return buffer.getvalue()


def _cell(value: Any, fmt: str = "") -> str:
    return "-" if value is None else format(value, fmt)
