"""The Optuna sweeper's pieces on a real journal file: the search space from Hydra's sweep syntax,
values written back as overrides, and what a resumed study asks again."""

import optuna
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from lmdisc.errors import LmdiscError
from lmdisc.sweep.optuna_sweeper import OptunaSweeper, tell_outcome
from lmdisc.sweep.search_space import override_value, parse_search_space
from lmdisc.sweep.study import PRUNED_AT_STEP, PRUNER, RETRY_OF, journal_storage


def test_hydra_sweep_syntax_becomes_optuna_distributions_and_the_command_line_wins():
    params = {"optim.optimizer.lr": "tag(log, interval(1e-4, 1e-1))", "seed": "1,2"}
    arguments = ["seed=7", "data.bptt=range(10, 40, 10)", "model=lstm_small,gpt", "+x=interval(0, 1)"]
    space, fixed = parse_search_space(OverridesParser.create(), params, arguments)
    assert space == {
        "optim.optimizer.lr": FloatDistribution(1e-4, 0.1, log=True),
        "data.bptt": IntDistribution(10, 30, step=10),
        "model": CategoricalDistribution(["lstm_small", "gpt"]),
        "+x": FloatDistribution(0.0, 1.0),
    }
    assert fixed == ["seed=7"]
    with pytest.raises(LmdiscError, match="Hydra's own settings"):
        parse_search_space(OverridesParser.create(), {}, ["hydra.sweeper.n_jobs=1,2"])


@pytest.mark.parametrize(
    "value", [0.0031622776601683794, 1e-05, 20, True, None, "gpt", "/tmp/a b/c,d=e", "it's", "back\\", "null"]
)
def test_override_values_read_back_as_themselves(value):
    parsed = OverridesParser.create().parse_overrides([f"key={override_value(value)}"])[0]
    assert parsed.value() == value and type(parsed.value()) is type(value)


def _sweeper(journal, **changes) -> OptunaSweeper:
    config = {
        "study_name": "s",
        "storage": str(journal),
        "direction": "minimize",
        "n_trials": 4,
        "n_jobs": 1,
        "max_failures": 1,
        "sampler": {"_target_": "optuna.samplers.RandomSampler", "seed": 3},
        "pruner": {"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 1},
        "params": {},
        **changes,
    }
    return OptunaSweeper(**config)


def test_a_resumed_study_fails_trials_left_running_and_asks_every_failed_trial_once_again(tmp_path):
    journal = tmp_path / "journal.log"
    study = optuna.create_study(storage=journal_storage(journal), study_name="s")
    space = {"lr": FloatDistribution(0.1, 50, log=True)}
    done, interrupted, failed = (study.ask(space) for _ in range(3))
    study.tell(done, 120.0)
    study.tell(failed, state=TrialState.FAIL)  # `interrupted` stays running, as after a kill -9

    resumed = _sweeper(journal)._open_study()
    trials = resumed.get_trials()
    assert [t.state for t in trials[:3]] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.FAIL]
    assert [t.state for t in trials[3:]] == [TrialState.WAITING, TrialState.WAITING]
    assert resumed.user_attrs[PRUNER] == {"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 1}
    # the retries are asked first, with the failed trials' parameters
    retries = [resumed.ask(space) for _ in range(2)]
    assert [(t.params, t.user_attrs[RETRY_OF]) for t in retries] == [
        (interrupted.params, interrupted.number),
        (failed.params, failed.number),
    ]

    for retry in retries:
        resumed.tell(retry, 110.0)
    again = _sweeper(journal)._open_study()  # already retried: nothing more is queued
    assert [t.state for t in again.get_trials()] == [TrialState.COMPLETE] + [TrialState.FAIL] * 2 + [
        TrialState.COMPLETE
    ] * 2


def test_a_study_is_continued_only_in_its_direction_and_settings_are_checked(tmp_path):
    journal = tmp_path / "journal.log"
    _sweeper(journal)._open_study()
    with pytest.raises(LmdiscError, match="created to minimize"):
        _sweeper(journal, direction="maximize")._open_study()
    with pytest.raises(LmdiscError, match="n_jobs"):
        _sweeper(journal, n_jobs=0)


def _job_return(status: JobStatus, value) -> JobReturn:
    result = JobReturn(status=status)
    result.return_value = value
    return result


def test_each_trial_is_told_what_its_job_did(tmp_path):
    study = optuna.create_study(storage=journal_storage(tmp_path / "journal.log"), study_name="s")
    pruned, raised, no_number, complete = (study.ask() for _ in range(4))
    pruned.report(300.0, step=25)
    pruned.set_user_attr(PRUNED_AT_STEP, 25)  # as the job's pruning callback leaves it
    outcomes = [
        (pruned, _job_return(JobStatus.COMPLETED, 250.0)),
        (raised, _job_return(JobStatus.FAILED, RuntimeError("out of memory"))),
        (no_number, _job_return(JobStatus.COMPLETED, float("nan"))),
        (complete, _job_return(JobStatus.COMPLETED, 123.25)),
    ]
    states = [tell_outcome(study, trial, result) for trial, result in outcomes]
    expected = [TrialState.PRUNED, TrialState.FAIL, TrialState.FAIL, TrialState.COMPLETE]
    assert states == expected
    assert [t.state for t in study.get_trials()] == expected
    assert study.best_trial.number == complete.number and study.best_value == 123.25
