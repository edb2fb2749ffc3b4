"""Two-process DDP on the CPU (gloo) through the real CLI: rkl_disc fine-tuning with its frozen
q_0 and discriminator, which must stay out of DDP's gradient sync and its unused-parameter check."""

import csv
import json
import subprocess

import pytest
import torch

from helpers import compose_train, gpt_overrides, rkl_overrides, run_cli
from lmdisc.cli.eval import evaluate

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]


def _train_on_two_processes(overrides: list[str], tmp_path, out) -> subprocess.CompletedProcess:
    """train.py through the real CLI under DDP with two CPU processes (gloo), one epoch, into `out`."""
    overrides = [
        *overrides,
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.max_epochs=1",
    ]
    return run_cli("lmdisc.cli.train", overrides, tmp_path, out)


def test_rkl_disc_fine_tuning_under_two_process_ddp(trained_run, trained_disc, tiny_corpus, tmp_path):
    run_dir, _ = trained_run
    out = tmp_path / "ddp"
    overrides = [
        *rkl_overrides(tiny_corpus, run_dir / "checkpoints" / "best.ckpt", trained_disc["checkpoint"]),
        "optim.optimizer.lr=0.5",
    ]
    done = _train_on_two_processes(overrides, tmp_path, out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["global_step"] > 0
    assert "distributed_backend=gloo" in done.stdout + done.stderr  # really two processes
    ckpt = torch.load(metrics["checkpoint"], weights_only=True)
    assert all(k.startswith("model.") for k in ckpt["state_dict"])  # q_0 and s are not saved
    header = (out / "csv" / "version_0" / "metrics.csv").read_text().splitlines()[0]
    assert "train/rkl" in header


def test_a_transformer_under_two_process_ddp_shares_blocks_and_reduces_validation(tiny_corpus, tmp_path):
    out = tmp_path / "ddp"
    _train_on_two_processes(gpt_overrides(tiny_corpus), tmp_path, out)
    with open(out / "csv" / "version_0" / "metrics.csv") as handle:
        logged = [float(row["val/ppl"]) for row in csv.DictReader(handle) if row.get("val/ppl")]
    # each rank scored its own share of the strided windows; token-weighted across ranks, the
    # logged perplexity is the whole split's, as one process evaluating the same weights finds
    again = evaluate(compose_train(tmp_path / "eval", [f"ckpt={out / 'checkpoints' / 'last.ckpt'}"], "eval"))
    assert logged[-1] == pytest.approx(again["val/ppl"], rel=1e-4)
