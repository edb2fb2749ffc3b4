"""Real (small) runs through the same entry points a researcher uses."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import REPO, compose_train, quick_overrides, write_slice
from lmdisc.checkpoint import load_checkpoint
from lmdisc.cli.eval import evaluate
from lmdisc.cli.train import train
from lmdisc.errors import LmdiscError

pytestmark = pytest.mark.slow


def _val_curve(run_dir: Path) -> list[float]:
    with open(run_dir / "csv" / "version_0" / "metrics.csv") as handle:
        return [float(r["val/ppl"]) for r in csv.DictReader(handle) if r.get("val/ppl")]


@pytest.mark.parametrize("model", ["lstm_small", "lstm_medium", "awd_lstm"])
def test_fast_dev_run_every_model(tmp_path, tiny_corpus, model):
    overrides = [*quick_overrides(tiny_corpus, model), "trainer.fast_dev_run=true", "logger=none"]
    if model == "awd_lstm":
        overrides += ["optim=asgd", "data.variable_bptt=true"]
    metrics = train(compose_train(tmp_path, overrides))
    assert metrics["global_step"] == 1


def test_short_training_lowers_validation_perplexity(trained_run, tiny_corpus):
    run_dir, metrics = trained_run
    curve = _val_curve(run_dir)
    assert len(curve) == 3
    assert curve[-1] < curve[0]
    assert metrics["val/ppl"] < 0.5 * metrics["vocab_size"]  # far better than a uniform guess
    for split, name in (("val", "valid"), ("test", "test")):
        lines = (tiny_corpus / f"{name}.txt").read_text().splitlines()
        assert metrics[f"{split}/tokens"] == sum(len(line.split()) + 1 for line in lines) - 1
    assert (run_dir / "config_resolved.yaml").is_file()
    assert json.loads((run_dir / "metrics.json").read_text())["val/ppl"] == metrics["val/ppl"]


def test_checkpoints_load_with_weights_only(trained_run):
    run_dir, _ = trained_run
    for name in ("best.ckpt", "last.ckpt"):
        ckpt = torch.load(run_dir / "checkpoints" / name, weights_only=True)
        assert (
            ckpt["lmdisc"]["tokenizer"]["words"][:1]
            and ckpt["lmdisc"]["config"]["model"]["hidden_size"] == 200
        )


def test_same_seed_same_numbers(trained_run, tiny_corpus, tmp_path):
    _, first = trained_run
    cfg = compose_train(
        tmp_path, [*quick_overrides(tiny_corpus), "trainer.max_epochs=3", "optim.optimizer.lr=5", "seed=7"]
    )
    again = train(cfg)
    assert again["val/loss"] == first["val/loss"] and again["test/loss"] == first["test/loss"]


def test_resume_from_last_checkpoint_continues_step_count(trained_run, tiny_corpus, tmp_path):
    run_dir, first = trained_run
    last = run_dir / "checkpoints" / "last.ckpt"
    steps_done = torch.load(last, weights_only=True)["global_step"]
    cfg = compose_train(
        tmp_path,
        [*quick_overrides(tiny_corpus), "trainer.max_epochs=4", "optim.optimizer.lr=5", f"ckpt_path={last}"],
    )
    metrics = train(cfg)
    assert steps_done == first["global_step"]
    assert metrics["global_step"] == steps_done * 4 // 3  # one more epoch of the same length
    assert metrics["epochs"] == 4


def test_last_checkpoint_is_written_at_epoch_ends_only(tiny_corpus, tmp_path, monkeypatch):
    # a mid-epoch last.ckpt would resume by replaying the epoch's first batches
    import lightning as L

    import lmdisc.cli.train as train_cli

    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    during_the_epoch = []

    class Probe(
        L.Callback
    ):  # (checkpoint callbacks run after the others at a hook, so look at the next batch)
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            during_the_epoch.append(last.exists())

    instantiate_callbacks = train_cli.instantiate_callbacks
    monkeypatch.setattr(train_cli, "instantiate_callbacks", lambda *a: [*instantiate_callbacks(*a), Probe()])
    cfg = compose_train(
        tmp_path, [*quick_overrides(tiny_corpus), "trainer.max_epochs=1", "trainer.val_check_interval=0.5"]
    )
    metrics = train(cfg)
    assert len(during_the_epoch) == metrics["global_step"] and not any(during_the_epoch)
    assert torch.load(last, weights_only=True)["global_step"] == metrics["global_step"]


def test_init_from_starts_from_the_trained_weights(trained_run, tiny_corpus, tmp_path):
    run_dir, first = trained_run
    best = run_dir / "checkpoints" / "best.ckpt"
    cfg = compose_train(
        tmp_path,
        [
            *quick_overrides(tiny_corpus),
            f"init_from={best}",
            "trainer.max_epochs=1",
            "optim.optimizer.lr=0.01",
        ],
    )
    metrics = train(cfg)
    assert metrics["global_step"] == first["global_step"] // 3  # the step count starts again
    assert metrics["val/ppl"] < 1.05 * first["val/ppl"]  # a tiny lr keeps the trained model


def test_eval_cli_writes_metrics_matching_training(trained_run, tmp_path):
    run_dir, first = trained_run
    out = tmp_path / "metrics.json"
    proc = subprocess.run(
        [
            sys.executable,
            "eval.py",
            f"ckpt={run_dir / 'checkpoints' / 'best.ckpt'}",
            f"metrics_file={out}",
            f"hydra.run.dir={tmp_path / 'hydra'}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "120"},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "perplexity" in proc.stdout
    metrics = json.loads(out.read_text())
    assert metrics["val/ppl"] == pytest.approx(first["val/ppl"], rel=1e-9)
    assert metrics["test/ppl"] == pytest.approx(first["test/ppl"], rel=1e-9)


def test_eval_refuses_a_checkpoint_from_another_vocabulary(trained_run, ptb_dir, tmp_path):
    run_dir, _ = trained_run
    other = write_slice(ptb_dir, tmp_path / "other", {"train": 300, "valid": 20, "test": 20})
    cfg = compose_train(
        tmp_path, [f"ckpt={run_dir / 'checkpoints' / 'best.ckpt'}", "data=text", f"data.path={other}"], "eval"
    )
    with pytest.raises(
        LmdiscError, match=r"has another tokenizer than the corpus: word tokenizer .*words in"
    ):
        evaluate(cfg)


def test_init_from_a_checkpoint_of_another_architecture_is_refused(trained_run, tiny_corpus, tmp_path):
    best = trained_run[0] / "checkpoints" / "best.ckpt"  # lstm_small, 2x200
    overrides = [*quick_overrides(tiny_corpus, model="lstm_medium"), f"init_from={best}"]
    with pytest.raises(LmdiscError, match=r"do not fit this model .*use the same model= options"):
        train(compose_train(tmp_path, overrides))


def test_truncated_or_foreign_checkpoints_are_refused(trained_run, tmp_path):
    run_dir, _ = trained_run
    data = (run_dir / "checkpoints" / "best.ckpt").read_bytes()
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(LmdiscError, match="truncated"):
        load_checkpoint(truncated)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(LmdiscError, match="no tokenizer"):
        load_checkpoint(foreign)
    with pytest.raises(LmdiscError, match="not found"):
        load_checkpoint(tmp_path / "missing.ckpt")


def test_awd_with_nt_asgd_and_variable_bptt_over_several_epochs(tmp_path, tiny_corpus):
    """Every epoch validates although variable BPTT changes its window count; once NT-ASGD
    averages, the checkpoint's averaged weights (tied matrix included) are what evaluation uses."""
    overrides = [
        *quick_overrides(tiny_corpus, "awd_lstm"),
        "model.emb_size=16",
        "model.hidden_size=24",
        "optim=asgd",
        "optim.optimizer.lr=30",
        "optim.averaging.nonmono=1",
        "data.variable_bptt=true",
        "data.eval_batch_size=10",
        "data.train_eval_tokens=0",
        "trainer.max_epochs=6",
    ]
    train(compose_train(tmp_path, overrides))
    curve = _val_curve(tmp_path / "run")
    assert len(curve) == 6
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert "averaged_state_dict" in torch.load(last, weights_only=True), f"NT-ASGD never triggered: {curve}"
    # evaluating the last checkpoint reproduces the validation perplexity logged with the averaged weights
    metrics = evaluate(
        compose_train(tmp_path, [f"ckpt={last}", f"metrics_file={tmp_path / 'm.json'}"], "eval")
    )
    assert metrics["val/ppl"] == pytest.approx(curve[-1], rel=1e-4)
