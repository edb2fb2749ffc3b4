"""Several processes inside Hydra (lmdisc.distributed): Lightning's DDP children join their job's
directory, in single runs and in multiruns; ddp_spawn and torchrun write one directory too.

The subprocess tests run the real CLI on the PTB slice, four training batches a rank."""

import contextlib
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class
from omegaconf import OmegaConf, open_dict

from helpers import DATA_DIR, quick_overrides
from lmdisc.cli import CONF_DIR
from lmdisc.distributed import child_command

TIMEOUT = 240  # seconds for one command: two processes on two busy cores take ~30 s
BATCHES = 4  # training batches a rank: global_step after the one epoch


def _compose_job(overrides: list[str], output_dir: Path):
    """The config of a job as Hydra hands it to the task (its Hydra node included)."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.name = "train"
    return cfg


def _task_part(cfg) -> dict:
    plain = OmegaConf.to_container(cfg, resolve=False)
    plain.pop("hydra")
    return plain


def test_a_ddp_child_composes_exactly_its_jobs_config_as_one_run_in_the_jobs_directory(tmp_path):
    job_dir = tmp_path / "sweep, 1=x" / "0"  # a comma and '=' must survive as one path
    job = [
        "seed=2",
        "trainer=ddp",
        "data=text",
        "data.path='/tmp/a, b=c'",
        "optim.optimizer.lr=0.5",
    ]
    parent_hydra = ["hydra.mode=MULTIRUN", "hydra/launcher=joblib", "+hydra.job.env_set.LMDISC_X=1"]
    cfg = _compose_job(job + parent_hydra, job_dir)
    command = _child_command_in(cfg)

    assert command[:3] == [sys.executable, "-m", "lmdisc.cli.train"]
    assert not {"-m", "--multirun"} & set(command[3:])
    assert "--config-name=train" in command and f"--config-path={CONF_DIR}" in command
    overrides = [arg for arg in command[3:] if not arg.startswith("--")]
    assert overrides[: len(job)] == job  # the job's own overrides, as Hydra parsed them
    assert "+hydra.job.env_set.LMDISC_X=1" in overrides  # a setting for the job itself is kept
    assert not any(o.startswith(("hydra/launcher", "hydra.mode=MULTIRUN")) for o in overrides)
    for expected in ("hydra.mode=RUN", "hydra.output_subdir=null", "hydra.job.chdir=false"):
        assert expected in overrides
    assert "hydra.job.name=train_rank1" in overrides

    child = _compose_job(overrides, tmp_path / "unused")
    assert child.hydra.run.dir == str(job_dir)
    assert child.hydra.mode.name == "RUN" and child.hydra.output_subdir is None
    assert child.hydra.job.env_set.LMDISC_X == "1"
    assert _task_part(child) == _task_part(cfg)

    moved = _compose_job([*job, "hydra.job.chdir=true"], job_dir)  # a job that changes directory
    assert "hydra.job.chdir=true" in _child_command_in(moved)


def test_the_slurm_launcher_asks_for_one_task_per_device_and_parallel_for_two_jobs(tmp_path):
    overrides = ["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"]
    launcher = _compose_job(overrides, tmp_path).hydra.launcher
    assert get_class(launcher._target_).__name__ == "SlurmLauncher"
    # srun starts one task per device on each node; Lightning's SLURMEnvironment ranks them
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 4, 4)
    assert launcher.partition is None and launcher.timeout_min == 240
    parallel = _compose_job(["hydra/launcher=parallel"], tmp_path).hydra.launcher
    assert get_class(parallel._target_).__name__ == "JoblibLauncher" and parallel.n_jobs == 2


def _child_command_in(cfg) -> list[str]:
    """child_command as it runs inside the job whose config (Hydra node included) is `cfg`."""
    hydra_config = HydraConfig.instance()
    before = hydra_config.cfg
    hydra_config.set_config(cfg)
    try:
        return child_command("lmdisc.cli.train", 1)
    finally:
        hydra_config.cfg = before


def _train_command(
    corpus: Path, root: Path, *overrides: str, launcher: tuple[str, ...] = ("-m",)
) -> list[str]:
    """train.py through the real CLI, with `root` as paths.root_dir (logs/ below it). A multirun's
    `-m` comes first in `overrides`."""
    return [
        sys.executable,
        *launcher,
        "lmdisc.cli.train",
        *[flag for flag in overrides if flag == "-m"],
        *quick_overrides(corpus),
        "trainer.accelerator=cpu",
        "trainer.max_epochs=1",
        f"trainer.limit_train_batches={BATCHES}",
        "trainer.limit_val_batches=2",
        "trainer.num_sanity_val_steps=0",
        f"paths.root_dir={root}",
        f"paths.data_dir={DATA_DIR}",
        *[override for override in overrides if override != "-m"],
    ]


def _run_together(commands: dict[str, list[str]], tmp_path: Path) -> dict[str, str]:
    """Run each command from its own directory under `tmp_path`, all at once (most of their time is
    spent starting Python, one core each), and return each one's output; all must succeed in time."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    outputs = {name: tmp_path / f"{name}.out" for name in commands}
    with contextlib.ExitStack() as stack:
        started = {}
        for name, command in commands.items():
            (tmp_path / name).mkdir()
            log = stack.enter_context(open(outputs[name], "w"))  # a file: a full pipe would stall it
            process = subprocess.Popen(command, cwd=tmp_path / name, env=env, stdout=log, stderr=log)
            stack.callback(_kill_if_running, process)
            started[name] = process
        deadline = time.monotonic() + TIMEOUT
        returncodes = {
            name: process.wait(timeout=max(1.0, deadline - time.monotonic()))
            for name, process in started.items()
        }
    texts = {name: path.read_text() for name, path in outputs.items()}
    for name, returncode in returncodes.items():
        assert returncode == 0, f"{name}:\n{texts[name][-4000:]}"
    return texts


def _kill_if_running(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
        process.wait()


def _one_run_dir(root: Path) -> Path:
    runs = list((root / "logs" / "train" / "runs").iterdir())
    assert len(runs) == 1, runs
    return runs[0]


def _check_job(job_dir: Path, seed: int, mode: str, lightning_children: bool) -> None:
    """One job's directory: results, its config written once by rank 0, the other rank's log."""
    metrics = json.loads((job_dir / "metrics.json").read_text())
    assert math.isfinite(metrics["val/ppl"]) and metrics["val/ppl"] > 1
    assert metrics["global_step"] == BATCHES and metrics["epochs"] == 1
    assert metrics["train_tokens_per_s"] > 0
    assert yaml.safe_load((job_dir / "config_resolved.yaml").read_text())["seed"] == seed
    hydra_cfg = yaml.safe_load((job_dir / ".hydra" / "hydra.yaml").read_text())["hydra"]
    assert hydra_cfg["mode"] == mode and hydra_cfg["job"]["name"] == "train"  # not a child's
    assert (job_dir / "train_rank1.log").is_file() == lightning_children


def _dirs_with_logs(root: Path) -> set[Path]:
    """Every directory some process ran a Hydra job in (each writes its <job name>.log)."""
    return {log.parent for log in root.rglob("*.log")}


@pytest.mark.slow
@pytest.mark.multiprocess
def test_a_ddp_multirun_writes_one_sweep_with_one_directory_a_job(tiny_corpus, tmp_path):
    command = _train_command(
        tiny_corpus, tmp_path / "multirun", "-m", "seed=1,2", "trainer=ddp", "trainer.devices=2"
    )
    output = _run_together({"multirun": command}, tmp_path)["multirun"]
    assert output.count("GLOBAL_RANK: 1, MEMBER: 2/2") == 2  # each job had its second process
    root = tmp_path / "multirun"
    sweeps = list((root / "logs" / "train" / "multiruns").iterdir())
    assert len(sweeps) == 1, sweeps  # a child re-running the sweep left a second one
    sweep = sweeps[0]
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    assert (sweep / "multirun.yaml").is_file()
    for num, seed in ((0, 1), (1, 2)):
        _check_job(sweep / str(num), seed, "MULTIRUN", lightning_children=True)
    assert _dirs_with_logs(root) == {sweep / "0", sweep / "1"}
    assert not (root / "logs" / "train" / "runs").exists()


@pytest.mark.slow
@pytest.mark.multiprocess
def test_single_runs_under_ddp_ddp_spawn_and_torchrun_write_one_directory_each(tiny_corpus, tmp_path):
    torchrun_dir = tmp_path / "torchrun" / "run"
    outputs = _run_together(
        {
            "ddp": _train_command(
                tiny_corpus, tmp_path / "ddp", "seed=3", "trainer=ddp", "trainer.devices=2"
            ),
            "spawn": _train_command(
                tiny_corpus, tmp_path / "spawn", "seed=3", "trainer=ddp_spawn", "trainer.devices=2"
            ),
            "torchrun": _train_command(
                tiny_corpus,
                tmp_path / "torchrun",
                "seed=3",
                "trainer=ddp",
                "trainer.devices=2",
                # both processes run Hydra: they must be given the same directory
                f"hydra.run.dir={torchrun_dir}",
                launcher=("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m"),
            ),
        },
        tmp_path,
    )
    for name in ("ddp", "spawn", "torchrun"):
        assert "GLOBAL_RANK: 1, MEMBER: 2/2" in outputs[name], name

    # Lightning started the second process with child_command, into the run's directory
    ddp_run = _one_run_dir(tmp_path / "ddp")
    _check_job(ddp_run, 3, "RUN", lightning_children=True)
    assert _dirs_with_logs(tmp_path / "ddp") == {ddp_run}

    # the module and data module were pickled to two new processes; the progress came back
    spawn_run = _one_run_dir(tmp_path / "spawn")
    _check_job(spawn_run, 3, "RUN", lightning_children=False)
    assert _dirs_with_logs(tmp_path / "spawn") == {spawn_run}

    # torchrun started both processes (TorchElasticEnvironment): Lightning started none of its own
    _check_job(torchrun_dir, 3, "RUN", lightning_children=False)
    assert _dirs_with_logs(tmp_path / "torchrun") == {torchrun_dir}
    assert list((tmp_path / "torchrun").rglob("metrics.json")) == [torchrun_dir / "metrics.json"]

    # one training, three ways of starting its two processes: the same shards, steps and numbers
    results = [json.loads((d / "metrics.json").read_text()) for d in (ddp_run, spawn_run, torchrun_dir)]
    for key in ("val/ppl", "test/ppl"):
        assert results[1][key] == pytest.approx(results[0][key], rel=1e-6), key
        assert results[2][key] == pytest.approx(results[0][key], rel=1e-6), key
