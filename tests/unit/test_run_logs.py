"""A run's logged rows from its CSV logs, or from a real offline W&B run's transaction log, with a
resumed run's logs joined at the step it resumed from."""

import pytest

from lmdisc.reproduce.run_logs import metric_rows, next_log_index, wandb_run_files


def _csv(run_dir, version: int, text: str) -> None:
    path = run_dir / "csv" / f"version_{version}" / "metrics.csv"
    path.parent.mkdir(parents=True)
    path.write_text(text)


def test_csv_rows_are_numbers_and_a_resumed_log_replaces_the_rows_from_its_step(tmp_path):
    _csv(tmp_path, 0, "epoch,step,val/ppl,train/loss\n0,10,90.5,\n0,20,,4.5\n1,30,80.0,\n2,")
    _csv(tmp_path, 1, "epoch,step,val/ppl\n1,25,85.0\n2,35,70.0\n")
    assert metric_rows(tmp_path, {"1": 20}) == [
        {"step": 10, "epoch": 0.0, "val/ppl": 90.5},
        {"step": 25, "epoch": 1.0, "val/ppl": 85.0},
        {"step": 35, "epoch": 2.0, "val/ppl": 70.0},
    ]
    # without a recorded step, a later log takes over from its own first row
    assert [r["step"] for r in metric_rows(tmp_path)] == [10, 20, 25, 35]
    assert next_log_index(tmp_path) == 2


def _wandb_run(tmp_path, monkeypatch, rows: list[dict]) -> None:
    import wandb

    for key, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": str(tmp_path)}.items():
        monkeypatch.setenv(key, value)
    run = wandb.init(project="lmdisc-test", dir=str(tmp_path))
    for row in rows:
        run.log(row)
    run.finish()


def test_an_offline_wandb_run_is_read_back_row_for_row(tmp_path, monkeypatch):
    # 300 rows (~40 KiB) cross a 32 KiB block; the last row (~70 KiB) spans blocks on its own
    rows = [
        {"train/loss": 1 / (i + 1), "val/ppl": 100.0 + i, "trainer/global_step": 10 * i, "epoch": i // 100}
        for i in range(300)
    ]
    wide = {f"train/rkl/mass_moved/bucket_{k:04d}": k * 0.5 for k in range(2500)}
    rows.append({**wide, "trainer/global_step": 3000})
    _wandb_run(tmp_path, monkeypatch, rows)
    (log_file,) = wandb_run_files(tmp_path)
    assert log_file.parent.name.startswith("offline-run-") and log_file.stat().st_size > 2 * 32768
    read = metric_rows(tmp_path)
    assert len(read) == 301
    assert read[0] == {"step": 0, "train/loss": 1.0, "val/ppl": 100.0, "epoch": 0}
    assert read[299] == {"step": 2990, "train/loss": pytest.approx(1 / 300), "val/ppl": 399.0, "epoch": 2}
    assert read[300] == {"step": 3000, **wide}
    assert next_log_index(tmp_path) == 1
    # a run killed mid-write: the rows before the cut are read, the torn record is not
    data = log_file.read_bytes()
    log_file.write_bytes(data[: 32768 + 100])
    assert 0 < len(metric_rows(tmp_path)) < 301


def test_a_resumed_wandb_run_replaces_the_rows_from_the_step_it_resumed_at(tmp_path, monkeypatch):
    _wandb_run(
        tmp_path, monkeypatch, [{"val/ppl": 90.0 - i, "trainer/global_step": 10 * i} for i in range(4)]
    )
    _wandb_run(
        tmp_path, monkeypatch, [{"val/ppl": 50.0 - i, "trainer/global_step": 20 + 10 * i} for i in range(3)]
    )
    assert len(wandb_run_files(tmp_path)) == 2
    assert [(r["step"], r["val/ppl"]) for r in metric_rows(tmp_path, {"1": 20})] == [
        (0, 90.0),
        (10, 89.0),
        (20, 50.0),
        (30, 49.0),
        (40, 48.0),
    ]
