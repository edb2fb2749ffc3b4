"""The sweep summary's table format, from job directories laid out as Hydra and train.py leave them
(the integration test in tests/integration/test_optuna_sweep.py checks it on real runs)."""

import csv
import json
import re
from pathlib import Path

import optuna
import yaml

from lmdisc.sweep.study import JOB_NUM, journal_storage
from lmdisc.sweep.summary import JOB_STATUS_FILE, summarise


def _job(sweep: Path, num: int, overrides: list[str], metrics: dict | None = None, error: str | None = None):
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"job": {"num": num}}}))
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))
    if error is not None:
        (job / JOB_STATUS_FILE).write_text(json.dumps({"status": "failed", "error": error}))


def _metrics(val: float, test: float, tokens_per_s: float = 1234.5, seconds: float = 12.25, **extra) -> dict:
    return {
        "val/ppl": val,
        "test/ppl": test,
        "train_tokens_per_s": tokens_per_s,
        "fit_seconds": seconds,
        **extra,
    }


def _table(md: str) -> list[list[str]]:
    rows = [line for line in md.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in re.split(r"(?<!\\)\|", row[1:-1])] for row in rows]


def test_rows_sorted_by_validation_perplexity_with_failed_and_missing_jobs_last(tmp_path):
    shared = ["data=ptb", "trainer.max_epochs=1"]
    _job(tmp_path, 0, [*shared, "optim.optimizer.lr=1"], _metrics(150.0, 140.0))
    _job(tmp_path, 1, [*shared, "optim.optimizer.lr=5"], _metrics(120.5, 115.25, 2000.0, 8.0))
    _job(tmp_path, 2, [*shared, "optim.optimizer.lr=50"], error="RuntimeError: diverged | badly")
    _job(tmp_path, 3, [*shared, "optim.optimizer.lr=20"])
    md_path, csv_path = summarise(tmp_path)

    md = md_path.read_text()
    assert "Every job: `data=ptb` `trainer.max_epochs=1`" in md
    header, _, *rows = _table(md)
    assert header == ["job", "overrides", "state", "val/ppl", "test/ppl", "tokens/s", "fit s", "note"]
    assert rows == [
        ["1", "`optim.optimizer.lr=5`", "complete", "120.50", "115.25", "2,000", "8.0", ""],
        ["0", "`optim.optimizer.lr=1`", "complete", "150.00", "140.00", "1,234", "12.2", ""],
        ["2", "`optim.optimizer.lr=50`", "failed", "-", "-", "-", "-", "RuntimeError: diverged \\| badly"],
        ["3", "`optim.optimizer.lr=20`", "no metrics.json", "-", "-", "-", "-", rows[3][-1]],
    ]
    assert rows[3][-1].startswith("no metrics.json")

    with open(csv_path, newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [r["job"] for r in table] == ["1", "0", "2", "3"]
    assert table[0]["overrides"] == "data=ptb trainer.max_epochs=1 optim.optimizer.lr=5"
    assert float(table[0]["val/ppl"]) == 120.5 and float(table[1]["fit_seconds"]) == 12.25
    assert table[2]["state"] == "failed" and table[2]["val/ppl"] == ""
    assert table[2]["note"] == "RuntimeError: diverged | badly"


def test_word_level_columns_appear_only_when_a_job_has_them(tmp_path):
    _job(tmp_path, 0, ["seed=1"], _metrics(100.0, 90.0))
    assert "word_ppl" not in summarise(tmp_path)[0].read_text()
    _job(tmp_path, 1, ["seed=2"], _metrics(80.0, 70.0, **{"val/word_ppl": 300.0, "test/word_ppl": 280.0}))
    header, _, first, second = _table(summarise(tmp_path)[0].read_text())
    assert header[3:7] == ["val/ppl", "test/ppl", "val/word_ppl", "test/word_ppl"]
    assert first[3:7] == ["80.00", "70.00", "300.00", "280.00"]
    assert second[3:7] == ["100.00", "90.00", "-", "-"]


def test_optuna_jobs_get_their_trial_and_state_and_lose_the_sweepers_bookkeeping(tmp_path):
    journal = tmp_path / "journal.log"
    study = optuna.create_study(storage=journal_storage(journal), study_name="s")
    for num, state in ((0, "COMPLETE"), (1, "PRUNED")):
        trial = study.ask()
        trial.set_user_attr(JOB_NUM, num)
        trial.report(200.0 + num, step=5)
        study.tell(trial, 100.0 if state == "COMPLETE" else None, state=optuna.trial.TrialState[state])
        _job(
            tmp_path,
            num,
            [f"optim.optimizer.lr={num + 1}", f"++callbacks.optuna_pruning.trial_number={trial.number}"],
            _metrics(100.0 + num, 90.0),
        )
    header, _, *rows = _table(summarise(tmp_path, str(journal), "s")[0].read_text())
    assert header[:4] == ["job", "trial", "overrides", "state"]
    assert [r[:4] for r in rows] == [
        ["0", "0", "`optim.optimizer.lr=1`", "complete"],
        ["1", "1", "`optim.optimizer.lr=2`", "pruned"],
    ]
