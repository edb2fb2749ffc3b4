"""A stage's identity: the same run however its overrides are spelled, another run when they or
its input checkpoints differ; and what happens to a directory whose record differs."""

import json

import pytest

from lmdisc.errors import LmdiscError
from lmdisc.reproduce.identity import describe_change, override_identity
from lmdisc.reproduce.stages import Stage, _set_aside, run_stage


@pytest.fixture
def ckpt(tmp_path):
    path = tmp_path / "base.ckpt"
    path.write_bytes(b"weights v1")
    return path


def test_spelling_order_prefixes_and_number_formats_do_not_change_the_identity(tmp_path, ckpt, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = override_identity(["data=ptb", "optim.optimizer.lr=1", f"init_from={ckpt}", "seed=3"])
    second = override_identity(
        ["seed=2", "+seed=3", "optim.optimizer.lr=1.0", "init_from=base.ckpt", "++data=ptb"]
    )
    assert first == second
    copy = tmp_path / "copy.ckpt"
    copy.write_bytes(ckpt.read_bytes())
    assert override_identity([f"init_from={copy}"]) == override_identity([f"init_from={ckpt}"])


def test_values_deletions_and_checkpoint_contents_change_the_identity(ckpt):
    base = override_identity([f"init_from={ckpt}", "seed=1"])
    assert override_identity([f"init_from={ckpt}", "seed=2"]) != base
    assert override_identity([f"init_from={ckpt}", "seed=1", "~trainer.max_epochs"]) != base
    ckpt.write_bytes(b"weights v2, re-trained in place")
    changed = override_identity([f"init_from={ckpt}", "seed=1"])
    assert describe_change(base, changed) == "init_from content changed"
    assert (
        describe_change(base, {**changed, "seed": "2", "lr": "1"})
        == "init_from content changed, +lr=1, seed: 1 -> 2"
    )


def test_a_missing_input_checkpoint_is_an_error_not_a_change(tmp_path):
    with pytest.raises(LmdiscError, match="no such checkpoint"):
        override_identity([f"+loss.discriminator_ckpt={tmp_path / 'gone.ckpt'}"])
    assert override_identity(["init_from=null"]) == {"init_from": "null"}


def _finished(tmp_path, record: dict | None, checkpoint: bool = False) -> Stage:
    stage = Stage("ft", "train", ["seed=1"], tmp_path / "ft")
    stage.out_dir.mkdir()
    stage.metrics_file.write_text('{"val/ppl": 1.0}')
    if record is not None:
        stage.record_file.write_text(json.dumps(record))
    if checkpoint:
        stage.last_checkpoint.parent.mkdir()
        stage.last_checkpoint.write_bytes(b"ckpt")
    return stage


def test_a_finished_stage_from_before_records_is_reused_and_the_log_says_unchecked(tmp_path):
    stage = _finished(tmp_path, {"overrides": ["paths.root_dir=/old", "seed=1"], "resumed_at": {}})
    lines = []
    assert run_stage(stage, log=lines.append) == {"val/ppl": 1.0}
    assert lines == [f"[skip] ft: {stage.metrics_file} exists (written before stage records: not checked)"]


def test_an_interrupted_run_from_before_records_is_resumed_not_cleared(tmp_path):
    stage = _finished(tmp_path, {"overrides": ["seed=1"], "resumed_at": {}}, checkpoint=True)
    stage.metrics_file.unlink()
    assert stage.resume_checkpoint == stage.last_checkpoint
    stage.record_file.write_text(json.dumps({"identity": override_identity(["seed=2"])}))
    assert stage.resume_checkpoint is None  # a recorded identity that differs is not resumed


def test_a_directory_set_aside_is_moved_when_it_holds_results_and_deleted_when_not(tmp_path):
    stage = _finished(tmp_path, {"identity": {"seed": "2"}})
    lines = []
    _set_aside(stage, lines.append)
    (aside,) = tmp_path.glob("ft.replaced-*")
    assert (aside / "metrics.json").is_file() and not stage.out_dir.exists()
    assert "moved to" in lines[0] and "a finished run with other overrides or inputs" in lines[0]
    stage.out_dir.mkdir()
    (stage.out_dir / "stage.log").write_text("killed before its first epoch")
    lines.clear()
    _set_aside(stage, lines.append)
    assert not stage.out_dir.exists() and len(list(tmp_path.glob("ft.replaced-*"))) == 1
    assert "no finished epoch" in lines[0]
