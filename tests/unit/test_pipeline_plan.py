"""The pipeline's plan and its checks: refused before anything runs, run names, placeholders."""

import pytest

from helpers import compose_train
from lmdisc.cli.reproduce import reproduce
from lmdisc.errors import LmdiscError
from lmdisc.reproduce import Pipeline
from lmdisc.reproduce import stages as stages_module
from lmdisc.reproduce.pipeline import check_grid
from lmdisc.reproduce.stages import Stage, run_stages

GRID = {"arms": {"ce": ["loss=ce"]}, "lrs": [0.3, 1.0], "seeds": [1, 2], "overrides": []}


def _pipeline(tmp_path, **finetune) -> Pipeline:
    cfg = {
        "common": ["data=ptb"],
        "base": {"ckpt": None, "overrides": []},
        "discriminator": {"ckpt": None, "overrides": []},
        "finetune": {**GRID, **finetune},
        "device": ["trainer.accelerator=cpu"],
    }
    return Pipeline(cfg, tmp_path, shared=["paths.data_dir=/data"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"lrs": []}, "at least one arm, lr and seed"),
        ({"seeds": []}, "at least one arm, lr and seed"),
        ({"arms": {}}, "at least one arm, lr and seed"),
        ({"lrs": [1.0, -0.1]}, r"positive numbers, got \[-0.1\]"),
        ({"lrs": [1.0, float("nan")]}, "positive numbers"),
        ({"lrs": [1.0, True]}, "positive numbers"),
        ({"lrs": [1.0, 1]}, "repeated value"),
        ({"seeds": [1, 1]}, "repeated value"),
        ({"seeds": [1, 2.5]}, "integers"),
        ({"arms": {"ce/x": ["loss=ce"]}}, "not a usable run name"),
        ({"arms": {"ce": "loss=ce"}}, "list of overrides"),
    ],
)
def test_a_bad_grid_is_refused_before_anything_runs(tmp_path, change, message):
    with pytest.raises(LmdiscError, match=message):
        check_grid({**GRID, **change})


def test_near_equal_learning_rates_get_distinct_run_names(tmp_path):
    stages = _pipeline(tmp_path, lrs=[0.1, 0.1000001]).finetune_stages("base.ckpt", "disc.ckpt")
    assert len({s.name for s in stages}) == len(stages) == 4
    assert stages[0].name == "ce_lr0.1_seed1"


def test_arm_placeholders_are_filled_and_other_braces_kept(tmp_path):
    arms = {"rkl": ["loss.discriminator_ckpt={disc_ckpt}", "+tag={base_ckpt}/{other}"]}
    (stage, *_) = _pipeline(tmp_path, arms=arms).finetune_stages("/b.ckpt", "/d.ckpt")
    assert "loss.discriminator_ckpt=/d.ckpt" in stage.overrides and "+tag=/b.ckpt/{other}" in stage.overrides


def test_paths_and_device_are_passed_to_a_stage_but_not_part_of_what_it_computes(tmp_path):
    for name in ("base.ckpt", "disc.ckpt"):
        (tmp_path / name).write_bytes(name.encode())
    (stage, *_) = _pipeline(tmp_path).finetune_stages(
        str(tmp_path / "base.ckpt"), str(tmp_path / "disc.ckpt")
    )
    assert stage.where == ["paths.data_dir=/data", "trainer.accelerator=cpu"]
    assert not {w.partition("=")[0] for w in stage.where} & stage.identity().keys()
    command = stage.command()
    assert command.index("trainer.accelerator=cpu") > command.index("optim.optimizer.lr=0.3")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("jobs=0", "jobs must be an integer >= 1"),
        ("jobs=1.5", "jobs must be an integer >= 1"),
        ("jobs=abc", "jobs must be an integer >= 1"),
        ("device=gpu", "device must be a list of overrides"),
        ("device=[gpu]", "device must be a list of overrides"),
        ("pipeline.finetune.lrs=[]", "at least one arm, lr and seed"),
    ],
)
def test_reproduce_refuses_bad_options_before_running_a_stage(tmp_path, override, message):
    with pytest.raises(LmdiscError, match=message):
        reproduce(compose_train(tmp_path, [override], "reproduce"))
    assert not (tmp_path / "run" / "base").exists()


def test_the_grid_reports_how_many_runs_are_finished_and_the_time_left(tmp_path, monkeypatch):
    stages = [Stage(f"run{i}", "train", [], tmp_path / f"run{i}") for i in range(3)]
    monkeypatch.setattr(stages_module, "_run_stage", lambda stage, log, jobs: ({"name": stage.name}, True))
    lines = []
    assert run_stages(stages, jobs=2, log=lines.append) == [{"name": f"run{i}"} for i in range(3)]
    assert lines[0].startswith("[grid] 1/3 finished, ~0 min left (0.0 min a run, 2 at a time)")
    assert lines[-1] == "[grid] 3/3 finished"
