"""A stage's identity is its resolved config: the same run however its overrides are spelled or
wherever it runs, another run when they, a config file or its input checkpoints change; and what
happens to a directory whose record differs."""

import json

import pytest

from lmdisc.cli import CONF_DIR
from lmdisc.errors import LmdiscError
from lmdisc.reproduce.identity import describe_change, resolved_identity
from lmdisc.reproduce.stages import IDENTITY_KEY, Stage, _set_aside, run_stage


def identity(*overrides: str, entry: str = "train") -> dict:
    return resolved_identity(entry, list(overrides), CONF_DIR)


@pytest.fixture
def ckpt(tmp_path):
    path = tmp_path / "base.ckpt"
    path.write_bytes(b"weights v1")
    return path


def test_spelling_order_prefixes_and_number_formats_do_not_change_the_identity(tmp_path, ckpt, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = identity("data=ptb", "optim.optimizer.lr=1", f"init_from={ckpt}", "seed=3")
    second = identity("seed=2", "++seed=3", "optim.optimizer.lr=1.0", "init_from=base.ckpt", "data=ptb")
    assert first == second
    copy = tmp_path / "copy.ckpt"
    copy.write_bytes(ckpt.read_bytes())
    assert identity(f"init_from={copy}") == identity(f"init_from={ckpt}")
    assert identity(f"init_from={ckpt}")["init_from"].startswith("sha256:")


def test_where_a_stage_runs_and_the_clock_do_not_change_the_identity(ckpt):
    here = identity("data=ptb", "loss=rkl_disc", f"init_from={ckpt}", f"loss.discriminator_ckpt={ckpt}")
    elsewhere = identity(
        "data=ptb",
        "loss=rkl_disc",
        f"init_from={ckpt}",
        f"loss.discriminator_ckpt={ckpt}",
        "paths.root_dir=/elsewhere",
        "paths.data_dir=/corpora",
        "trainer.accelerator=gpu",
        "trainer.devices=[1]",
        "trainer.enable_progress_bar=false",
        "callbacks.progress_bar.every_s=5",
        "logger=wandb",
        "task_name=another_name",
    )
    assert here == elsewhere
    # values built from paths or checkpoints follow the placeholder and the checkpoint's sha256
    assert here["data.path"] == "<paths.data_dir>/ptb"
    assert here["loss.terms.rkl.loss.reference_ckpt"] == here["init_from"]
    assert not any(key.startswith(("paths.", "logger", "trainer.devices")) for key in here)
    stamped = [identity("++run_stamp=${now:%H-%M-%S-%f}") for _ in range(2)]
    assert stamped[0] == stamped[1] and stamped[0]["run_stamp"] == "<now>"


def test_values_deletions_and_checkpoint_contents_change_the_identity(ckpt):
    base = identity(f"init_from={ckpt}", "seed=1")
    assert identity(f"init_from={ckpt}", "seed=2") != base
    assert identity(f"init_from={ckpt}", "seed=1", "trainer.precision=bf16-mixed") != base
    deleted = identity(f"init_from={ckpt}", "seed=1", "~trainer.max_epochs")
    assert describe_change(base, deleted) == "-trainer.max_epochs=40"
    ckpt.write_bytes(b"weights v2, re-trained in place")
    changed = identity(f"init_from={ckpt}", "seed=1")
    assert describe_change(base, changed) == "init_from content changed"
    assert (
        describe_change(base, {**changed, "seed": 2, "lr": 1})
        == "init_from content changed, +lr=1, seed: 1 -> 2"
    )


def test_editing_an_experiment_file_changes_the_identity(tmp_path):
    experiment = tmp_path / "conf" / "experiment" / "tiny_arm.yaml"
    experiment.parent.mkdir(parents=True)
    spelled = ["experiment=tiny_arm", f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "loss=rkl_disc"]
    experiment.write_text("# @package _global_\nloss:\n  lam: 0.5\n")
    first = identity(*spelled)
    assert identity(*spelled) == first and first["loss.lam"] == 0.5
    experiment.write_text("# @package _global_\nloss:\n  lam: 0.25\n")
    # the edited value, and the value interpolated from it (the rkl term's weight)
    assert (
        describe_change(first, identity(*spelled))
        == "loss.lam: 0.5 -> 0.25, loss.terms.rkl.weight: 0.5 -> 0.25"
    )


def test_each_entry_point_is_composed_from_its_own_config(ckpt):
    evaluation = identity(f"ckpt={ckpt}", "data=ptb", "metrics_file=/out/metrics.json", entry="eval")
    assert evaluation["ckpt"].startswith("sha256:") and "metrics_file" not in evaluation
    disc = identity(f"lm_ckpt={ckpt}", entry="train_disc")
    assert disc["lm_ckpt"] == evaluation["ckpt"] and disc["discriminator.encoder"] == "freq_class"


def test_a_missing_input_checkpoint_or_overrides_that_do_not_compose_are_errors_not_changes(tmp_path):
    with pytest.raises(LmdiscError, match="no such checkpoint"):
        identity("loss=rkl_disc", f"loss.discriminator_ckpt={tmp_path / 'gone.ckpt'}")
    assert identity("init_from=null")["init_from"] is None
    with pytest.raises(LmdiscError, match=r"train with \['loss=no_such_loss'\] does not compose"):
        identity("loss=no_such_loss")


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


@pytest.mark.parametrize(
    "record",
    [
        {"overrides": ["paths.root_dir=/old", "seed=1"], "resumed_at": {}},  # before identities
        {"overrides": ["seed=1"], "identity": {"seed": "2"}, "resumed_at": {}},  # override identities
    ],
)
def test_a_finished_stage_from_before_resolved_identities_is_reused_and_the_log_says_unchecked(
    tmp_path, record
):
    stage = _finished(tmp_path, record)
    lines = []
    assert run_stage(stage, log=lines.append) == {"val/ppl": 1.0}
    assert lines == [
        f"[skip] ft: {stage.metrics_file} exists (its stage.json predates resolved identities: not checked)"
    ]


def test_an_interrupted_run_from_before_resolved_identities_is_resumed_not_cleared(tmp_path):
    stage = _finished(tmp_path, {"overrides": ["seed=1"], "identity": {"seed": "1"}}, checkpoint=True)
    stage.metrics_file.unlink()
    assert stage.resume_checkpoint == stage.last_checkpoint
    other = Stage("ft", "train", ["seed=2"], stage.out_dir)
    stage.record_file.write_text(json.dumps({"resolved_identity": other.identity()}))
    assert stage.record_change() == "data.seed: 2 -> 1, seed: 2 -> 1"  # data.seed is ${seed}
    assert stage.resume_checkpoint is None  # a recorded identity that differs is not resumed
    stage.record_file.write_text(json.dumps({"resolved_identity": stage.identity()}))
    assert stage.resume_checkpoint == stage.last_checkpoint


def test_a_directory_set_aside_is_moved_when_it_holds_results_and_deleted_when_not(tmp_path):
    stage = _finished(tmp_path, {"resolved_identity": {"seed": 2}})
    lines = []
    _set_aside(stage, lines.append)
    (aside,) = tmp_path.glob("ft.replaced-*")
    assert (aside / "metrics.json").is_file() and not stage.out_dir.exists()
    assert "moved to" in lines[0] and "a finished run with another config or inputs" in lines[0]
    stage.out_dir.mkdir()
    (stage.out_dir / "stage.log").write_text("killed before its first epoch")
    lines.clear()
    _set_aside(stage, lines.append)
    assert not stage.out_dir.exists() and len(list(tmp_path.glob("ft.replaced-*"))) == 1
    assert "no finished epoch" in lines[0]


def test_a_record_with_keys_ignored_since_still_matches(tmp_path):
    """Keys that later became ignored (the last-checkpoint callback's old name) do not make a finished
    stage look changed; eval.py's precision, now set by the precision group, compares as before."""
    stage = _finished(tmp_path, None)
    identity = stage.identity()
    old = {
        **identity,
        "callbacks.last_checkpoint.filename": "last",
        "callbacks.last_checkpoint.save_top_k": 1,
    }
    stage.record_file.write_text(json.dumps({"overrides": ["seed=1"], IDENTITY_KEY: old, "resumed_at": {}}))
    assert stage.record_change() is None and stage.finished_as_planned
    evaluation = resolved_identity("eval", ["ckpt=null", "precision=bf16-mixed"], CONF_DIR)
    assert evaluation["precision"] == "bf16-mixed" and "trainer.precision" not in evaluation


@pytest.mark.parametrize("recorded_as", ["precision", "trainer.precision"])
def test_an_evaluation_recorded_under_either_name_of_its_precision_still_matches(tmp_path, recorded_as):
    """eval.py's precision was `precision`, then `trainer.precision` (the precision group), and is
    compared as `precision`: a finished full-test scoring recorded under either is reused."""
    stage = Stage("score", "eval", ["ckpt=null", "precision=bf16-mixed"], tmp_path / "score")
    stage.out_dir.mkdir()
    stage.metrics_file.write_text('{"test/ppl": 1.0}')
    recorded = {k: v for k, v in stage.identity().items() if k != "precision"}
    recorded[recorded_as] = "bf16-mixed"
    stage.record_file.write_text(json.dumps({"overrides": stage.overrides, IDENTITY_KEY: recorded}))
    assert stage.finished_as_planned
    recorded[recorded_as] = "32-true"
    stage.record_file.write_text(json.dumps({"overrides": stage.overrides, IDENTITY_KEY: recorded}))
    assert stage.record_change() == "precision: 32-true -> bf16-mixed"
