"""The pipeline's plan and its checks: refused before anything runs, run names, placeholders."""

import json

import pytest
from omegaconf import OmegaConf

from helpers import compose_train
from lmdisc.cli.reproduce import reproduce
from lmdisc.errors import LmdiscError
from lmdisc.reproduce import Pipeline
from lmdisc.reproduce.grid import GridJob, GridLauncher, grid_device, pins_device, plan_launch
from lmdisc.reproduce.pipeline import check_grid
from lmdisc.reproduce.stages import Stage

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


@pytest.mark.parametrize("experiment", ["reproduce_ptb_small", "smollm2_ppl_reg"])
def test_a_pipeline_runs_in_a_stable_directory_so_the_same_command_resumes(tmp_path, experiment):
    """hydra/default's time-stamped run directory once won: a second run of the same command
    started the pipeline afresh elsewhere."""
    cfg = compose_train(tmp_path, [f"experiment={experiment}"], "reproduce", return_hydra_config=True)
    name = cfg.pipeline.name
    assert OmegaConf.select(cfg, "hydra.run.dir") == f"{tmp_path}/logs/reproduce/{name}"


def test_near_equal_learning_rates_get_distinct_run_names(tmp_path):
    stages = _pipeline(tmp_path, lrs=[0.1, 0.1000001]).finetune_stages("base.ckpt", "disc.ckpt")
    assert len({s.name for s in stages}) == len(stages) == 4
    assert stages[0].name == "ce_lr0.1_seed1"


def test_an_arm_with_its_own_seeds_adds_runs_and_leaves_the_others_named_as_before(tmp_path):
    arms = {"ce": ["loss=ce"], "ppl": {"overrides": ["loss=ppl"], "seeds": [1, 2, 3]}}
    names = [s.name for s in _pipeline(tmp_path, arms=arms, lrs=[0.3]).finetune_stages("/b", "/d")]
    assert names == [
        "ce_lr0.3_seed1",
        "ce_lr0.3_seed2",
        "ppl_lr0.3_seed1",
        "ppl_lr0.3_seed2",
        "ppl_lr0.3_seed3",
    ]


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


def _compose_with_hydra(tmp_path, overrides: list[str]):
    """reproduce.py's config as its app sees it: with its Hydra settings (the grid's launcher)."""
    return compose_train(tmp_path, overrides, "reproduce", return_hydra_config=True)


def test_jobs_over_a_local_machine_or_a_cluster_are_refused_before_a_stage_runs(tmp_path):
    cfg = _compose_with_hydra(tmp_path, ["jobs=2", "hydra/launcher=submitit_slurm"])
    with pytest.raises(LmdiscError, match=r"jobs=2 splits one machine.*array_parallelism"):
        reproduce(cfg)
    cfg = _compose_with_hydra(tmp_path, ["jobs=2", "hydra/launcher=joblib", "hydra.launcher.n_jobs=3"])
    with pytest.raises(LmdiscError, match=r"jobs=2 and hydra\.launcher\.n_jobs=3 disagree"):
        reproduce(cfg)
    assert not (tmp_path / "run" / "base").exists()
    with pytest.raises(LmdiscError, match=r"needs reproduce\.py's Hydra settings"):
        reproduce(compose_train(tmp_path, [], "reproduce"))


@pytest.mark.parametrize(
    ("overrides", "added", "share", "at_once"),
    [
        ([], [], 1, 1),
        (["jobs=4"], ["hydra/launcher=joblib", "hydra.launcher.n_jobs=4"], 4, 4),
        (["hydra/launcher=joblib", "hydra.launcher.n_jobs=3"], ["hydra.launcher.n_jobs=3"], 3, 3),
        (["hydra/launcher=joblib", "jobs=2"], ["hydra.launcher.n_jobs=2"], 2, 2),
        (["hydra/launcher=parallel"], ["hydra.launcher.n_jobs=2"], 2, 2),  # conf/hydra/launcher/parallel.yaml
        (["hydra/launcher=submitit_slurm", "hydra.launcher.array_parallelism=2"], [], 1, 2),
        (["hydra/launcher=slurm"], [], 1, 16),  # conf/hydra/launcher/slurm.yaml
    ],
)
def test_the_launch_plan_says_how_many_runs_share_the_machine(tmp_path, overrides, added, share, at_once):
    cfg = _compose_with_hydra(tmp_path, overrides)
    assert plan_launch(cfg.hydra, cfg.jobs)[:3] == (added, share, at_once)


def test_a_slurm_launcher_is_made_for_one_device_a_run_with_its_files_under_the_pipeline(tmp_path):
    cfg = _compose_with_hydra(tmp_path, ["hydra/launcher=slurm", "hydra.launcher.partition=gpu"])
    grid = GridLauncher(cfg.hydra, cfg.jobs, tmp_path / "run")
    launcher = OmegaConf.to_container(grid.master.hydra.launcher, resolve=True)
    assert launcher["_target_"].endswith("SlurmLauncher") and launcher["partition"] == "gpu"
    assert (launcher["nodes"], launcher["tasks_per_node"], launcher["gpus_per_node"]) == (1, 1, 1)
    assert launcher["submitit_folder"] == f"{tmp_path / 'run' / 'launcher'}/.submitit/%j"
    assert OmegaConf.to_container(grid.master.hydra.sweep)["subdir"] == "${grid_run}"  # named per run


@pytest.mark.parametrize(
    ("job", "gpus", "expected"),
    [
        (0, 0, []),
        (5, 0, []),
        (0, 1, ["trainer.accelerator=gpu", "trainer.devices=[0]"]),
        (3, 1, ["trainer.accelerator=gpu", "trainer.devices=[0]"]),
        (0, 4, ["trainer.accelerator=gpu", "trainer.devices=[0]"]),
        (5, 4, ["trainer.accelerator=gpu", "trainer.devices=[1]"]),
        (7, 4, ["trainer.accelerator=gpu", "trainer.devices=[3]"]),
        (8, 4, ["trainer.accelerator=gpu", "trainer.devices=[0]"]),
    ],
)
def test_grid_job_k_runs_on_gpu_k_mod_the_gpus_present(job, gpus, expected):
    assert grid_device(job, gpus) == expected


def test_a_pinned_device_is_left_as_given():
    assert not pins_device(
        ["paths.data_dir=/d", "trainer.accelerator=gpu", "trainer.enable_progress_bar=false"]
    )
    assert pins_device(["trainer.accelerator=cpu"])
    assert pins_device(["trainer.accelerator=gpu", "trainer.devices=[2]"])
    assert pins_device(["+trainer.devices=2"])
    assert pins_device(["trainer=cpu"]) and pins_device(["trainer=ddp"]) and not pins_device(["trainer=gpu"])


def test_the_grid_reports_how_many_runs_are_finished_and_the_time_left(tmp_path):
    stages = {f"run{i}": Stage(f"run{i}", "train", [], tmp_path / f"run{i}") for i in range(4)}
    job = GridJob(stages, share=2, at_once=2, progress_dir=tmp_path / "progress")
    job.progress_dir.mkdir()
    assert job.progress_line() == "[grid] 0/4 finished"
    (job.progress_dir / "run0.json").write_text(json.dumps({"seconds": None}))  # reused: not timed
    assert job.progress_line() == "[grid] 1/4 finished"
    (job.progress_dir / "run1.json").write_text(json.dumps({"seconds": 600.0}))
    (job.progress_dir / "run2.json").write_text(json.dumps({"seconds": 1200.0}))
    (job.progress_dir / "other.json").write_text(json.dumps({"seconds": 1.0}))  # not in this grid
    assert job.progress_line() == "[grid] 3/4 finished, ~8 min left (15.0 min a run, 2 at a time)"
    (job.progress_dir / "run3.json").write_text(json.dumps({"seconds": 60.0}))
    assert job.progress_line() == "[grid] 4/4 finished"


def test_a_launcher_config_that_does_not_resolve_is_refused_before_a_stage_runs(tmp_path):
    cfg = _compose_with_hydra(tmp_path, ["hydra/launcher=slurm", "~trainer.devices"])  # slurm.yaml reads it
    with pytest.raises(LmdiscError, match=r"\(hydra\.launcher\) does not resolve.*trainer\.devices"):
        reproduce(cfg)
    assert not (tmp_path / "run" / "base").exists()
