"""hparams_search=optuna_lr through the real CLI (a sweep stopped after one trial and resumed), the
pruning callback stopping a run at a mid-epoch validation, and the summary every multirun writes."""

import csv
import json
import os
import subprocess
import sys

import optuna
import pytest
import yaml
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from helpers import DATA_DIR, REPO, compose_train, quick_overrides
from lmdisc.cli.train import train
from lmdisc.sweep.study import JOB_NUM, PRUNED_AT_STEP, PRUNER, journal_storage

pytestmark = pytest.mark.slow

# one epoch of 6 batches, validated every 3 (2 batches each), then the full evaluation
TINY_BUDGET = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=6",
    "trainer.val_check_interval=3",
    "trainer.limit_val_batches=2",
    "logger=none",
]


def _multirun(tmp_path, sweep_dir, overrides: list[str]) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "lmdisc.cli.train",
        "-m",
        *overrides,
        f"hydra.sweep.dir={sweep_dir}",
        f"paths.root_dir={tmp_path}",
        f"paths.data_dir={DATA_DIR}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def _summary_csv(sweep_dir) -> list[dict]:
    with open(sweep_dir / "summary.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_an_optuna_sweep_resumes_where_it_stopped_and_summarises_every_trial(tiny_corpus, tmp_path):
    sweep_dir = tmp_path / "sweep"
    command = [*quick_overrides(tiny_corpus), *TINY_BUDGET, "hparams_search=optuna_lr"]
    first = _multirun(tmp_path, sweep_dir, [*command, "hydra.sweeper.n_trials=1"])
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    first_metrics = sweep_dir / "0" / "metrics.json"
    stamp = first_metrics.stat().st_mtime_ns

    again = _multirun(tmp_path, sweep_dir, [*command, "hydra.sweeper.n_trials=2"])
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "#1 : " in again.stdout and "#0 : " not in again.stdout  # only the missing trial ran
    assert first_metrics.stat().st_mtime_ns == stamp
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == ["0", "1"]

    study = optuna.load_study(
        study_name="optuna_lr", storage=journal_storage(sweep_dir / "optuna_journal.log")
    )
    trials = study.get_trials()
    assert [(t.number, t.state, t.user_attrs[JOB_NUM]) for t in trials] == [
        (0, TrialState.COMPLETE, 0),
        (1, TrialState.COMPLETE, 1),
    ]
    metrics = {t.number: json.loads((sweep_dir / str(t.number) / "metrics.json").read_text()) for t in trials}
    for trial in trials:
        # reported at both validations, the mid-epoch one included; the objective is the job's val/ppl
        assert sorted(trial.intermediate_values) == [3, 6]
        assert trial.value == metrics[trial.number]["val/ppl"]
        overrides = yaml.safe_load((sweep_dir / str(trial.number) / ".hydra" / "overrides.yaml").read_text())
        assert f"optim.optimizer.lr={trial.params['optim.optimizer.lr']!r}" in overrides
    assert trials[0].params != trials[1].params  # the resumed sampler did not draw the first value again

    best = yaml.safe_load((sweep_dir / "optuna_best.yaml").read_text())
    winner = min(trials, key=lambda t: t.value)
    assert best["best_trial"] == winner.number and best["best_value"] == winner.value
    assert best["best_params"] == winner.params
    assert best["trials"] == {"complete": 2, "pruned": 0, "fail": 0}

    rows = _summary_csv(sweep_dir)
    assert [int(r["job"]) for r in rows] == sorted(metrics, key=lambda n: metrics[n]["val/ppl"])
    md = (sweep_dir / "summary.md").read_text()
    for row in rows:
        job = metrics[int(row["job"])]
        assert row["state"] == "complete" and row["trial"] == row["job"]
        for key in (
            "val/ppl",
            "test/ppl",
            "val/word_ppl",
            "test/word_ppl",
            "train_tokens_per_s",
            "fit_seconds",
        ):
            assert float(row[key]) == job[key]
        assert f"| complete | {job['val/ppl']:.2f} | {job['test/ppl']:.2f} |" in md
        assert "callbacks.optuna_pruning" not in row["overrides"]


def test_the_basic_sweeper_summary_reports_a_failed_job(tiny_corpus, tmp_path):
    sweep_dir = tmp_path / "sweep"
    done = _multirun(
        tmp_path,
        sweep_dir,
        [
            *quick_overrides(tiny_corpus),
            *TINY_BUDGET,
            "trainer.gradient_clip_algorithm=norm,no_such_algorithm",
        ],
    )
    assert done.returncode != 0  # Hydra's basic sweeper stops at the failed job
    rows = _summary_csv(sweep_dir)
    clip = [next(o for o in r["overrides"].split() if "gradient_clip_algorithm" in o) for r in rows]
    assert [(r["job"], c, r["state"]) for r, c in zip(rows, clip)] == [
        ("0", "trainer.gradient_clip_algorithm=norm", "complete"),
        ("1", "trainer.gradient_clip_algorithm=no_such_algorithm", "failed"),
    ]
    metrics = json.loads((sweep_dir / "0" / "metrics.json").read_text())
    assert float(rows[0]["val/ppl"]) == metrics["val/ppl"]
    assert "no_such_algorithm" in rows[1]["note"]


def _study_with_finished_trials(journal, value: float) -> optuna.Study:
    """A study whose two complete trials reported `value` at every step, pruning by the median."""
    study = optuna.create_study(storage=journal_storage(journal), study_name="prune")
    study.set_user_attr(PRUNER, {"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 1})
    for lr in (1.0, 2.0):
        study.add_trial(
            create_trial(
                params={"lr": lr},
                distributions={"lr": FloatDistribution(0.1, 50)},
                value=value,
                intermediate_values={step: value for step in range(1, 101)},
            )
        )
    return study


def _fine_tune_as_trial(tmp_path, tiny_corpus, journal, number: int) -> dict:
    overrides = [
        *quick_overrides(tiny_corpus),
        "hparams_search=optuna_lr",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=8",
        "trainer.val_check_interval=4",
        "trainer.limit_val_batches=2",
        "logger=none",
        "evaluate=false",
        f"callbacks.optuna_pruning.storage={journal}",
        "callbacks.optuna_pruning.study_name=prune",
        f"callbacks.optuna_pruning.trial_number={number}",
    ]
    return train(compose_train(tmp_path, overrides))


@pytest.mark.parametrize("others, pruned", [(1.0, True), (1e9, False)])
def test_a_trial_worse_than_the_median_stops_at_a_mid_epoch_validation(tiny_corpus, tmp_path, others, pruned):
    journal = tmp_path / "journal.log"
    study = _study_with_finished_trials(journal, others)
    number = study.ask().number
    metrics = _fine_tune_as_trial(tmp_path, tiny_corpus, journal, number)

    trial = study.get_trials()[number]
    assert trial.state == TrialState.RUNNING  # the sweeper, not the job, tells the outcome
    if pruned:  # perplexity 1 is out of reach: pruned at the first validation, 4 of 8 steps
        assert metrics["global_step"] == 4
        assert sorted(trial.intermediate_values) == [4]
        assert trial.user_attrs[PRUNED_AT_STEP] == 4
    else:
        assert metrics["global_step"] == 8
        assert sorted(trial.intermediate_values) == [4, 8]
        assert PRUNED_AT_STEP not in trial.user_attrs
    assert (tmp_path / "run" / "metrics.json").is_file()  # a pruned run still ends cleanly
