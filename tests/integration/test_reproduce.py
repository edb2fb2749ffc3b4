"""The reproduce pipeline end to end on a tiny slice of PTB: stages, the grid through Hydra's
launchers (basic, joblib), resume, identities from the resolved config, results.md from CSV or
W&B logs."""

import json
import shutil

import pytest
import torch
import yaml

from helpers import compose_train
from lmdisc.cli.reproduce import reproduce
from lmdisc.cli.train import train
from lmdisc.errors import LmdiscError
from lmdisc.reproduce.report import mass_moved, val_curve
from lmdisc.reproduce.stages import Stage, only_pipeline_in, run_stage

pytestmark = pytest.mark.slow

TINY_DATA = ["data=text", "data.batch_size=8", "data.eval_batch_size=4", "data.bptt=10", "model=lstm_small"]


def _quoted(items: list[str]) -> str:
    return "[" + ",".join(f'"{item}"' for item in items) + "]"


def _compose_reproduce(tmp_path, overrides: list[str]):
    """reproduce.py's config as its app sees it: with its Hydra settings (the grid's launcher)."""
    return compose_train(tmp_path, overrides, "reproduce", return_hydra_config=True)


def _pipeline_overrides(corpus, seeds: str = "[1,2]", jobs: int = 2) -> list[str]:
    return [
        f"jobs={jobs}",
        f"pipeline.common={_quoted([*TINY_DATA, f'data.path={corpus}'])}",
        f"pipeline.base.overrides={_quoted(['trainer.max_epochs=2', 'optim.optimizer.lr=5'])}",
        f"pipeline.discriminator.overrides={_quoted(['discriminator.train_split=heldout', 'trainer.max_epochs=2'])}",
        "pipeline.finetune.lrs=[0.5]",
        f"pipeline.finetune.seeds={seeds}",
        f"device={_quoted(['trainer.accelerator=cpu', 'trainer.enable_progress_bar=false'])}",
    ]


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory, tiny_corpus):
    """The whole pipeline; its 6 fine-tuning runs go through Hydra's joblib launcher (jobs=2)."""
    cfg = _compose_reproduce(tmp_path_factory.mktemp("reproduce"), _pipeline_overrides(tiny_corpus))
    return cfg, reproduce(cfg)


def test_pipeline_writes_results_for_every_arm(pipeline_run):
    _, report = pipeline_run
    out = report.parent
    text = report.read_text()
    for arm in ("ce", "rkl_disc", "control"):
        assert f"| {arm} | 0.5 |" in text
    assert "rkl_disc − control" in text and "## Discriminator" in text
    assert (out / "bucket_logprob_change.png").stat().st_size > 0
    assert (out / "val_curves.png").stat().st_size > 0
    results = json.loads((out / "results.json").read_text())
    assert len(results["runs"]) == 6
    by_arm = {}
    for run in results["runs"]:
        by_arm.setdefault(run["arm"], []).append(run["val/ppl"])
    # seeds differ (variable BPTT draws different windows), so the std is not a constant 0
    assert by_arm["ce"][0] != by_arm["ce"][1]
    # only the rkl arms log moved mass; the control (s = 0) and rkl_disc both fine-tune from the base
    assert "## Probability mass moved per bucket" in text
    assert results["discriminator"]["val/disc_bce"] < 1.3863
    # each run was a job of Hydra's joblib launcher: its files beside the pipeline's, its stage's
    # outputs in the stage's own directory
    run_dir = out / "finetune" / "ce_lr0.5_seed1"
    job_dir = out / "launcher" / "ce_lr0.5_seed1"
    assert "+grid_run=ce_lr0.5_seed1" in yaml.safe_load((job_dir / ".hydra" / "overrides.yaml").read_text())
    launcher = yaml.safe_load((job_dir / ".hydra" / "hydra.yaml").read_text())["hydra"]["launcher"]
    assert launcher["_target_"].endswith("JoblibLauncher") and launcher["n_jobs"] == 2
    assert json.loads((job_dir / "metrics.json").read_text()) == json.loads(
        (run_dir / "metrics.json").read_text()
    )
    assert (run_dir / "checkpoints" / "best.ckpt").is_file() and not (job_dir / "checkpoints").exists()


def test_pipeline_resumes_without_rerunning_finished_stages(pipeline_run, capsys):
    cfg, report = pipeline_run

    def stamps() -> dict:  # of each stage's metrics (the launcher's job directories hold copies)
        return {
            p: p.stat().st_mtime_ns for p in report.parent.rglob("metrics.json") if "launcher" not in p.parts
        }

    before = stamps()
    reproduce(cfg)
    out = capsys.readouterr().out
    assert "[run ]" not in out and "[skip] discriminator" in out
    assert "[grid] 6/6 finished: 0 ran, 6 reused" in out  # nothing ran, nothing to time
    assert len(before) == 9 and stamps() == before


def test_an_interrupted_training_stage_goes_on_from_its_last_checkpoint(tiny_corpus, tmp_path):
    out_dir = tmp_path / "stage"
    stale = out_dir / "csv" / "version_0" / "metrics.csv"  # a run killed before its first checkpoint
    stale.parent.mkdir(parents=True)
    stale.write_text("step,val/ppl\n0,1e9\n")
    common = [*TINY_DATA, f"data.path={tiny_corpus}", "trainer.enable_progress_bar=false", "evaluate=false"]
    two_epochs = Stage("ft", "train", [*common, "trainer.max_epochs=2"], out_dir)
    lines = []
    first = run_stage(Stage("ft", "train", [*common, "trainer.max_epochs=1"], out_dir), log=lines.append)
    assert lines[0].startswith("[clear] ft") and "no finished epoch" in lines[0] and first["epochs"] == 1
    # as if the two-epoch run had been stopped after its first epoch, having logged a row after it
    (out_dir / "metrics.json").unlink()
    record = json.loads(two_epochs.record_file.read_text())
    two_epochs.record_file.write_text(json.dumps({**record, "resolved_identity": two_epochs.identity()}))
    csv_file = out_dir / "csv" / "version_0" / "metrics.csv"
    header = csv_file.read_text().splitlines()[0].split(",")
    late = {"step": str(first["global_step"] + 1), "val/ppl": "1e9"}  # logged after the checkpoint
    with open(csv_file, "a", encoding="utf-8") as log:
        log.write(",".join(late.get(column, "") for column in header) + "\n")
    lines.clear()
    second = run_stage(two_epochs, log=lines.append)
    assert lines[0].startswith("[resume] ft") and "ckpt_path=" in lines[0]
    assert second["epochs"] == 2 and second["global_step"] == 2 * first["global_step"]
    assert json.loads(two_epochs.record_file.read_text())["resumed_at"] == {"1": first["global_step"]}
    curve = val_curve(str(out_dir))  # csv/version_0 up to the resume, then version_1
    assert len(curve) == 2 and curve[0][0] < first["global_step"] <= curve[1][0]
    assert all(ppl < 1e9 for _, ppl in curve)  # the stale log was removed, the late row cut


def test_a_training_stage_whose_overrides_changed_is_run_again(tiny_corpus, tmp_path):
    out_dir = tmp_path / "stage"
    common = [*TINY_DATA, f"data.path={tiny_corpus}", "trainer.enable_progress_bar=false", "evaluate=false"]
    run_stage(Stage("ft", "train", [*common, "trainer.max_epochs=1"], out_dir), log=lambda _: None)
    (out_dir / "metrics.json").unlink()
    lines = []
    again = run_stage(
        Stage("ft", "train", [*common, "trainer.max_epochs=1", "seed=5"], out_dir), log=lines.append
    )
    assert lines[0].startswith("[clear] ft")
    assert "another config or inputs (data.seed: 1234 -> 5, seed: 1234 -> 5)" in lines[0]
    assert lines[1].startswith("[run ] ft")
    assert again["epochs"] == 1 and not (out_dir / "csv" / "version_1").exists()
    (aside,) = tmp_path.glob("stage.replaced-*")  # the interrupted run's checkpoint is kept
    assert (aside / "checkpoints" / "last.ckpt").is_file()


def _eval_stage(ckpt, corpus, out_dir, where=()) -> Stage:
    overrides = ["data=text", f"data.path={corpus}", f"ckpt={ckpt}"]
    return Stage(
        "base_eval", "eval", overrides, out_dir, where=[f"metrics_file={out_dir / 'metrics.json'}", *where]
    )


def test_a_finished_stage_is_reused_wherever_it_runs_and_run_again_when_its_input_changes(
    trained_run, tiny_corpus, tmp_path
):
    run_dir, _ = trained_run
    ckpt = tmp_path / "base.ckpt"
    shutil.copy(run_dir / "checkpoints" / "best.ckpt", ckpt)
    out_dir = tmp_path / "base_eval"
    first = run_stage(_eval_stage(ckpt, tiny_corpus, out_dir), log=lambda _: None)
    lines = []
    moved = _eval_stage(ckpt, tiny_corpus, out_dir, where=["device=cpu", f"paths.root_dir={tmp_path}"])
    assert run_stage(moved, log=lines.append) == first and lines[0].startswith("[skip] base_eval")
    # the pipeline directory moved elsewhere, its input copied there: the same stage
    copied, relocated = tmp_path / "elsewhere" / "base.ckpt", tmp_path / "elsewhere" / "base_eval"
    copied.parent.mkdir()
    shutil.copy(ckpt, copied)
    out_dir.rename(relocated)
    lines.clear()
    again = run_stage(_eval_stage(copied, tiny_corpus, relocated), log=lines.append)
    assert lines[0].startswith("[skip] base_eval"), lines
    assert again == first
    relocated.rename(out_dir)
    # the base re-trained in place: same path, other weights
    state = torch.load(ckpt, weights_only=True)
    state["state_dict"] = {k: v * 0.5 for k, v in state["state_dict"].items()}
    torch.save(state, ckpt)
    lines.clear()
    again = run_stage(_eval_stage(ckpt, tiny_corpus, out_dir), log=lines.append)
    assert lines[0].startswith("[again] base_eval") and "(ckpt content changed)" in lines[0]
    assert lines[1].startswith("[clear] base_eval") and "moved to" in lines[1]
    assert again["test/ppl"] != first["test/ppl"]


def test_a_finished_stage_whose_overrides_changed_is_run_again_and_one_without_a_record_is_kept(
    trained_run, tiny_corpus, tmp_path
):
    ckpt = trained_run[0] / "checkpoints" / "best.ckpt"
    out_dir = tmp_path / "base_eval"
    run_stage(_eval_stage(ckpt, tiny_corpus, out_dir), log=lambda _: None)
    bigger = _eval_stage(ckpt, tiny_corpus, out_dir)
    bigger.overrides.append("data.eval_batch_size=2")
    lines = []
    run_stage(bigger, log=lines.append)
    assert lines[0].startswith("[again] base_eval") and "(data.eval_batch_size: 10 -> 2)" in lines[0]
    bigger.record_file.unlink()  # as a pipeline directory written before stage records existed
    lines.clear()
    run_stage(_eval_stage(ckpt, tiny_corpus, out_dir), log=lines.append)
    assert lines[0].startswith("[skip] base_eval") and "not checked" in lines[0]


def test_a_second_pipeline_in_the_same_directory_is_refused(tmp_path):
    refused = pytest.raises(LmdiscError, match=r"another reproduce\.py is running")
    with only_pipeline_in(tmp_path), refused, only_pipeline_in(tmp_path):
        pass
    with only_pipeline_in(tmp_path):  # released when the first one ends
        pass


def test_pipeline_scores_a_given_discriminator_instead_of_training_one(pipeline_run, tiny_corpus, tmp_path):
    """... with its one fine-tuning run through Hydra's basic launcher, in this process."""
    _, report = pipeline_run
    first = json.loads((report.parent / "results.json").read_text())
    overrides = [
        *_pipeline_overrides(tiny_corpus, seeds="[1]", jobs=1),
        f"pipeline.base.ckpt={first['base_checkpoint']}",
        f"pipeline.discriminator.ckpt={first['discriminator']['checkpoint']}",
        "~pipeline.finetune.arms.ce",
        "~pipeline.finetune.arms.control",
    ]
    text = reproduce(_compose_reproduce(tmp_path, overrides)).read_text()
    assert "Given (scored here, not trained)" in text and "| rkl_disc | 0.5 |" in text
    assert "± 0.0" not in text  # one seed: no spread is shown rather than a spread of zero
    scored = json.loads((tmp_path / "run" / "results.json").read_text())["discriminator"]
    assert scored["val/disc_bce"] == pytest.approx(first["discriminator"]["val/disc_bce"], abs=1e-5)
    assert not (tmp_path / "run" / "discriminator" / "checkpoints").exists()
    hydra_cfg = yaml.safe_load(
        (tmp_path / "run" / "launcher" / "rkl_disc_lr0.5_seed1" / ".hydra" / "hydra.yaml").read_text()
    )
    assert hydra_cfg["hydra"]["launcher"]["_target_"].endswith("BasicLauncher")


def test_train_refuses_a_pipeline_experiment(tmp_path):
    cfg = compose_train(tmp_path, ["experiment=reproduce_ptb_small"])
    with pytest.raises(LmdiscError, match=r"reproduce\.py"):
        train(cfg)


def test_a_moved_pipeline_reports_the_runs_finished_so_far_without_running_any(
    pipeline_run, tiny_corpus, tmp_path
):
    _, report = pipeline_run
    moved = tmp_path / "run"
    shutil.copytree(report.parent, moved)
    # as on another machine: the absolute checkpoint path the base recorded no longer exists there
    base_metrics = moved / "base" / "metrics.json"
    base_metrics.write_text(
        json.dumps({**json.loads(base_metrics.read_text()), "checkpoint": "/gone/best.ckpt"})
    )
    (unfinished,) = moved.glob("finetune/control_*_seed2")
    (unfinished / "metrics.json").unlink()
    stamps = {p: p.stat().st_mtime_ns for p in moved.rglob("metrics.json")}
    overrides = [*_pipeline_overrides(tiny_corpus), "report_only=true"]
    text = reproduce(compose_train(tmp_path, overrides, "reproduce")).read_text()
    assert "**Partial: 5 of 6 fine-tuning runs have finished.**" in text
    assert f"`{moved / 'base' / 'checkpoints' / 'best.ckpt'}`" in text
    assert len(json.loads((moved / "results.json").read_text())["runs"]) == 5
    assert stamps == {p: p.stat().st_mtime_ns for p in moved.rglob("metrics.json")}  # nothing ran
    (moved / "discriminator" / "metrics.json").unlink()
    with pytest.raises(LmdiscError, match="nothing to report yet: stage discriminator"):
        reproduce(compose_train(tmp_path, overrides, "reproduce"))


def test_a_grid_through_the_joblib_launcher_reports_from_wandb_logs(
    pipeline_run, tiny_corpus, tmp_path, capsys
):
    """Two runs at once through `hydra/launcher=joblib`, each logging to an offline W&B run only
    (no CSV): the report's curves and moved mass come from the W&B runs' own files, and equal
    those the first pipeline's identical runs logged to CSV."""
    cfg, report = pipeline_run
    first = json.loads((report.parent / "results.json").read_text())
    finetune = [*cfg.pipeline.finetune.overrides, "logger=wandb"]
    overrides = [
        *_pipeline_overrides(tiny_corpus, jobs=1),
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        # in each job's environment, and so its stage's: joblib's worker processes may predate a
        # variable set in this one
        "+hydra.job.env_set.WANDB_MODE=offline",
        f"pipeline.base.ckpt={first['base_checkpoint']}",
        f"pipeline.discriminator.ckpt={first['discriminator']['checkpoint']}",
        f"pipeline.finetune.overrides={_quoted(finetune)}",
        "~pipeline.finetune.arms.ce",
        "~pipeline.finetune.arms.control",
    ]
    text = reproduce(_compose_reproduce(tmp_path, overrides)).read_text()
    assert "[grid] 2 runs through Hydra's joblib launcher, n_jobs=2" in capsys.readouterr().out
    assert "| rkl_disc | 0.5 |" in text
    assert "| arm | 1-9 | 10-99 | 100-999 |" in text  # the moved mass, buckets rarest first
    for seed in (1, 2):
        run_dir = tmp_path / "run" / "finetune" / f"rkl_disc_lr0.5_seed{seed}"
        csv_run_dir = report.parent / "finetune" / f"rkl_disc_lr0.5_seed{seed}"
        assert not (run_dir / "csv").exists() and list(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
        curve, csv_curve = val_curve(str(run_dir)), val_curve(str(csv_run_dir))
        assert len(curve) >= 2 and [s for s, _ in curve] == [s for s, _ in csv_curve]
        assert [p for _, p in curve] == pytest.approx([p for _, p in csv_curve], rel=1e-5)
        moved, csv_moved = mass_moved(str(run_dir)), mass_moved(str(csv_run_dir))
        assert moved.keys() == csv_moved.keys() and moved == pytest.approx(csv_moved, rel=1e-5, abs=1e-9)


def test_editing_an_experiment_file_runs_the_stage_again_and_an_unchanged_one_is_skipped(
    tiny_corpus, tmp_path
):
    conf = tmp_path / "conf"
    experiment = conf / "experiment" / "tiny_finetune.yaml"
    experiment.parent.mkdir(parents=True)
    experiment.write_text(
        "# @package _global_\ntrainer:\n  max_epochs: 1\noptim:\n  optimizer:\n    lr: 5.0\n"
    )
    overrides = [
        *TINY_DATA,
        f"data.path={tiny_corpus}",
        "evaluate=false",
        "trainer.limit_train_batches=20",
        "trainer.limit_val_batches=2",
        "trainer.num_sanity_val_steps=0",
        "experiment=tiny_finetune",
        f"hydra.searchpath=[file://{conf}]",  # the stage's own run reads it too
    ]
    where = ["trainer.enable_progress_bar=false", "trainer.accelerator=cpu"]

    def run(log: list) -> dict:  # a new Stage each time, as a new reproduce.py would build
        return run_stage(Stage("ft", "train", overrides, tmp_path / "ft", where=where), log=log.append)

    lines = []
    first = run(lines)
    assert lines[0].startswith("[run ] ft")
    lines.clear()
    assert run(lines) == first and lines == [f"[skip] ft: {tmp_path / 'ft' / 'metrics.json'} exists"]
    experiment.write_text(experiment.read_text().replace("lr: 5.0", "lr: 1.0"))
    lines.clear()
    again = run(lines)
    assert (
        lines[0] == "[again] ft: it finished with another config or inputs (optim.optimizer.lr: 5.0 -> 1.0)"
    )
    assert again["global_step"] == first["global_step"] and again["fit_seconds"] != first["fit_seconds"]
    config = yaml.safe_load((tmp_path / "ft" / "config_resolved.yaml").read_text())
    assert config["optim"]["optimizer"]["lr"] == 1.0  # the run read the edited file
