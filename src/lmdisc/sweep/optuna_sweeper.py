"""`hydra/sweeper=lmdisc_optuna`: a Hydra sweeper on current Optuna, whose study lives in a journal
file in the sweep directory so that an interrupted sweep resumes.

Hand-written because the published hydra-optuna-sweeper pins optuna<3. It follows Hydra's
BasicSweeper: the configured launcher runs each batch of trials (n_jobs at a time), and a job's
return value (train.py returns val/ppl) is the trial's objective. Jobs report to the study
themselves while they train (`lmdisc.callbacks.OptunaPruning`): the sweeper hands each job its
trial number and the journal's path, and stores the pruner's config in the study for the jobs to
rebuild. A job the callback stopped is told PRUNED.

Resuming: running the same command again with the same hydra.sweep.dir loads the study, counts
its complete and pruned trials towards n_trials, marks trials an interrupted run left running as
failed, and asks the parameters of every failed trial once more before sampling new ones. Job
numbers continue after the last job of the study, so no job directory is overwritten.
"""

from __future__ import annotations

import fcntl
import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from lmdisc.config import instantiate
from lmdisc.errors import LmdiscError
from lmdisc.io import atomic_write_text
from lmdisc.sweep import study as studies
from lmdisc.sweep.search_space import override_value, parse_search_space, trial_overrides
from lmdisc.sweep.summary import summarise

log = logging.getLogger(__name__)

PRUNING_CALLBACK = "callbacks.optuna_pruning"
PRUNING_TARGET = "lmdisc.callbacks.optuna_pruning.OptunaPruning"
BEST_FILE = "optuna_best.yaml"


class OptunaSweeper(Sweeper):
    def __init__(
        self,
        study_name: str,
        storage: str,
        direction: str,
        n_trials: int,
        n_jobs: int,
        max_failures: int,
        sampler: DictConfig | None,
        pruner: DictConfig | None,
        params: DictConfig | None,
    ) -> None:
        for name, value, least in (
            ("n_trials", n_trials, 1),
            ("n_jobs", n_jobs, 1),
            ("max_failures", max_failures, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise LmdiscError(f"hydra.sweeper.{name} must be a whole number >= {least}, got {value!r}")
        if direction not in ("minimize", "maximize"):
            raise LmdiscError(f"hydra.sweeper.direction must be minimize or maximize, got {direction!r}")
        self.study_name = study_name
        self.storage = Path(storage).absolute()
        self.direction = direction
        self.n_trials = n_trials
        self.n_jobs = n_jobs
        self.max_failures = max_failures
        self.sampler_config = _container(sampler)
        self.pruner_config = _container(pruner)
        self.params = _container(params) or {}
        self.hydra_context: HydraContext | None = None
        self.config: DictConfig | None = None
        self.launcher = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context = hydra_context
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> list[Sequence[JobReturn]]:
        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        space, fixed = parse_search_space(parser, self.params, arguments)
        if not space:
            raise LmdiscError(
                "nothing to search: set hydra.sweeper.params, or give a sweep such as "
                "'optim.optimizer.lr=tag(log, interval(0.1, 50))'"
            )
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        with _only_sweeper(sweep_dir):
            study = self._open_study()
            try:
                return self._run_trials(study, space, fixed)
            except BaseException:
                # Hydra ends a multirun that raises without its callbacks' on_multirun_end
                _summarise_quietly(sweep_dir, str(self.storage), self.study_name)
                raise
            finally:
                _report_best(study, sweep_dir / BEST_FILE)

    def _open_study(self) -> optuna.Study:
        """Create the study, or load it to continue: the sampler's seed moves on by the number of
        trials already asked, so a resumed sweep does not draw its first run's values again."""
        self.storage.parent.mkdir(parents=True, exist_ok=True)
        storage = studies.journal_storage(self.storage)
        names = optuna.get_all_study_names(storage)
        asked = (
            len(optuna.load_study(study_name=self.study_name, storage=storage).trials)
            if self.study_name in names
            else 0
        )
        sampler = None
        if self.sampler_config is not None:
            config = dict(self.sampler_config)
            if config.get("seed") is not None:
                config["seed"] = int(config["seed"]) + asked
            sampler = instantiate(config)
        study = optuna.create_study(
            storage=storage,
            study_name=self.study_name,
            direction=self.direction,
            sampler=sampler,
            load_if_exists=True,
        )
        if study.direction.name.lower() != self.direction:
            raise LmdiscError(
                f"study {self.study_name!r} in {self.storage} was created to {study.direction.name.lower()}, "
                f"not {self.direction}: use another hydra.sweeper.study_name or hydra.sweep.dir"
            )
        study.set_user_attr(studies.PRUNER, self.pruner_config)
        if asked:
            log.info(
                "Resuming study %r (%s): %d of %d trials finished",
                self.study_name,
                self.storage,
                len(studies.finished(study)),
                self.n_trials,
            )
        _requeue_failed(study)
        return study

    def _run_trials(self, study: optuna.Study, space, fixed: list[str]) -> list[Sequence[JobReturn]]:
        returns: list[Sequence[JobReturn]] = []
        job_num = 1 + max(
            (t.user_attrs.get(studies.JOB_NUM, -1) for t in study.get_trials(deepcopy=False)), default=-1
        )
        failures = 0
        while (remaining := self.n_trials - len(studies.finished(study))) > 0:
            if failures > self.max_failures:
                raise LmdiscError(
                    f"{failures} trials failed in this run (hydra.sweeper.max_failures={self.max_failures}): "
                    "see their jobs' logs; running the same command again retries them"
                )
            trials = [study.ask(space) for _ in range(min(self.n_jobs, remaining))]
            for offset, trial in enumerate(trials):
                trial.set_user_attr(studies.JOB_NUM, job_num + offset)
            batch = [fixed + trial_overrides(t.params) + self._pruning_overrides(t.number) for t in trials]
            try:
                self.validate_batch_is_legal(batch)
                results = self.launcher.launch(batch, initial_job_idx=job_num)
            except BaseException:
                for trial in trials:
                    study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
                raise
            for trial, result in zip(trials, results):
                failures += tell_outcome(study, trial, result) == TrialState.FAIL
            job_num += len(trials)
            returns.append(results)
        return returns

    def _pruning_overrides(self, number: int) -> list[str]:
        """The job's pruning callback, told where its trial is (`++`: added, or replacing the
        block an hparams_search config defines)."""
        if self.pruner_config is None:
            return []
        values = {
            "_target_": PRUNING_TARGET,
            "storage": str(self.storage),
            "study_name": self.study_name,
            "trial_number": number,
        }
        return [f"++{PRUNING_CALLBACK}.{key}={override_value(value)}" for key, value in values.items()]


def _summarise_quietly(sweep_dir: Path, storage: str, study_name: str) -> None:
    """The summary of a sweep that stops with an error, which it must not hide."""
    try:
        summarise(sweep_dir, storage, study_name)
    except Exception as err:
        log.warning("Could not write the sweep's summary: %s", err)


def _container(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


@contextmanager
def _only_sweeper(sweep_dir: Path) -> Iterator[None]:
    """One sweeper per sweep directory: a second one would count the first one's running trials
    as interrupted."""
    with open(sweep_dir / ".optuna_sweeper.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LmdiscError(f"another Optuna sweep is running in {sweep_dir}") from None
        yield


def _requeue_failed(study: optuna.Study) -> None:
    """Trials left running by an interrupted sweep failed; every failed trial not yet retried is
    asked again, with its parameters, before any new one."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        log.warning("Trial %d was left running by an interrupted sweep: marked failed", trial.number)
        study.tell(trial.number, state=TrialState.FAIL)
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs[studies.RETRY_OF] for t in trials if studies.RETRY_OF in t.user_attrs}
    for trial in trials:
        if trial.state == TrialState.FAIL and trial.number not in retried:
            log.info("Trial %d failed: asking its parameters %s again", trial.number, trial.params)
            study.enqueue_trial(trial.params, user_attrs={studies.RETRY_OF: trial.number})


def tell_outcome(study: optuna.Study, trial: optuna.Trial, result: JobReturn) -> TrialState:
    """Complete, pruned (the job's callback said so), or failed (the job raised, or returned no number)."""
    if result.status != JobStatus.COMPLETED:
        log.error("Trial %d failed: %r", trial.number, result._return_value)
        study.tell(trial, state=TrialState.FAIL)
        return TrialState.FAIL
    stored = next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number)
    if studies.PRUNED_AT_STEP in stored.user_attrs:
        log.info("Trial %d pruned at step %d", trial.number, stored.user_attrs[studies.PRUNED_AT_STEP])
        study.tell(trial, state=TrialState.PRUNED)
        return TrialState.PRUNED
    value = result.return_value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        log.error("Trial %d failed: its job returned %r, not a number", trial.number, value)
        study.tell(trial, state=TrialState.FAIL)
        return TrialState.FAIL
    study.tell(trial, float(value))
    log.info("Trial %d finished with value %s and parameters %s", trial.number, value, trial.params)
    return TrialState.COMPLETE


def _report_best(study: optuna.Study, path: Path) -> None:
    """Print the best trial and write it to `path` (also with no complete trial, saying so)."""
    counts = {state.name.lower(): 0 for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    for trial in study.get_trials(deepcopy=False):
        if trial.state.name.lower() in counts:
            counts[trial.state.name.lower()] += 1
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    best = study.best_trial if complete else None
    report = {
        "study_name": study.study_name,
        "direction": study.direction.name.lower(),
        "trials": counts,
        "best_trial": best.number if best else None,
        "best_job": best.user_attrs.get(studies.JOB_NUM) if best else None,
        "best_value": best.value if best else None,
        "best_params": dict(best.params) if best else None,
    }
    atomic_write_text(OmegaConf.to_yaml(OmegaConf.create(report)), path)
    if best is None:
        log.warning("No trial of study %r completed (%s); wrote %s", study.study_name, counts, path)
    else:
        log.info(
            "Best trial %d (job %s): value %s with %s; wrote %s",
            best.number,
            report["best_job"],
            best.value,
            best.params,
            path,
        )
