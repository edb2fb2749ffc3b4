"""A sweep's Optuna study, kept in a journal file that the sweeper, every trial's job and the
summary open: the names it stores besides Optuna's own, and the ways in.

The journal (`JournalFileBackend`) takes a file lock around each append, so the jobs of a
parallel launcher can report to it at the same time, and it needs no database server.
"""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from lmdisc.config import instantiate
from lmdisc.errors import LmdiscError

# trial user attributes
JOB_NUM = "job_num"  # the Hydra job (hydra.job.num) that ran the trial
PRUNED_AT_STEP = "pruned_at_step"  # set by the job's pruning callback when it stops the run
RETRY_OF = "retry_of"  # the failed trial whose parameters this one runs again
# study user attribute: the pruner's config, from which each job rebuilds the sweep's pruner
PRUNER = "pruner"


def journal_storage(path: str | Path) -> JournalStorage:
    return JournalStorage(JournalFileBackend(str(path)))


def load_study(path: str | Path, study_name: str, pruner: optuna.pruners.BasePruner | None = None):
    if not Path(path).is_file():
        raise LmdiscError(f"no Optuna journal at {path}")
    return optuna.load_study(study_name=study_name, storage=journal_storage(path), pruner=pruner)


def running_trial(path: str | Path, study_name: str, number: int) -> optuna.Trial:
    """Trial `number`, asked by the sweeper and still running, in a study that prunes with the
    sweeper's pruner (which Optuna does not store: the sweeper keeps its config in the study)."""
    study = load_study(path, study_name)
    pruner_config = study.user_attrs.get(PRUNER)
    if pruner_config is not None:
        study = load_study(path, study_name, instantiate(pruner_config))
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    if number not in trials:
        raise LmdiscError(f"study {study_name!r} in {path} has no trial {number}")
    if trials[number].state != TrialState.RUNNING:
        raise LmdiscError(
            f"trial {number} of study {study_name!r} is {trials[number].state.name}, not running: "
            "a trial's job reports only while the sweeper runs it"
        )
    trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
    return optuna.trial.Trial(study, trial_id)


def trials_by_job(path: str | Path, study_name: str) -> dict[int, FrozenTrial]:
    """The study's trials keyed by the Hydra job number that ran them."""
    study = load_study(path, study_name)
    return {t.user_attrs[JOB_NUM]: t for t in study.get_trials(deepcopy=False) if JOB_NUM in t.user_attrs}


def finished(study: optuna.Study) -> list[FrozenTrial]:
    """Trials that count towards n_trials."""
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
