"""CUDA-only checks (skipped without a GPU): rkl_disc fine-tuning (LSTM, GPT, a tiny transformers
model) and train_disc.py on the GPU, in fp32 and bf16-mixed, a full (tiny) epoch each so the numbers
must come out finite and sane."""

import math

import pytest
import torch

from helpers import compose_train, disc_overrides, gpt_overrides, hf_overrides, rkl_overrides
from lmdisc.cli.train import train
from lmdisc.cli.train_disc import train_discriminator

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.slow,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_rkl_disc_fine_tuning_on_cuda(trained_run, trained_disc, tiny_corpus, tmp_path, precision):
    run_dir, base = trained_run
    overrides = [
        *rkl_overrides(tiny_corpus, run_dir / "checkpoints" / "best.ckpt", trained_disc["checkpoint"]),
        "trainer.accelerator=gpu",
        f"trainer.precision={precision}",
        "trainer.max_epochs=1",
        "optim.optimizer.lr=0.5",
    ]
    metrics = train(compose_train(tmp_path, overrides))
    assert math.isfinite(metrics["val/ppl"])
    # one gentle epoch from the base stays near it: within 10% (a broken loss on GPU would not)
    assert metrics["val/ppl"] < 1.1 * base["val/ppl"]


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_train_disc_on_cuda_beats_the_zero_head(trained_run, tmp_path, precision):
    run_dir, _ = trained_run
    overrides = [
        *disc_overrides(run_dir / "checkpoints" / "best.ckpt"),
        "trainer.accelerator=gpu",
        f"trainer.precision={precision}",
        "trainer.max_epochs=3",
        "optim.optimizer.lr=0.001",  # the tiny corpus's rate (as in conftest's trained_disc), not lm_frozen's 1e-4
        "discriminator.train_split=heldout",
    ]
    metrics = train_discriminator(compose_train(tmp_path, overrides, "train_disc"))
    assert metrics["best_val_disc_bce"] < 2 * math.log(2)


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
@pytest.mark.parametrize("which", ["gpt", "hf"])
def test_transformer_rkl_disc_fine_tuning_on_cuda(
    gpt_run, hf_run, tiny_corpus, tiny_hf_models, tmp_path, which, precision
):
    run = gpt_run if which == "gpt" else hf_run
    base = (
        gpt_overrides(tiny_corpus) if which == "gpt" else hf_overrides(tiny_corpus, tiny_hf_models["llama"])
    )
    overrides = [
        *base,
        "loss=rkl_disc",
        f"init_from={run['lm_ckpt']}",
        f"loss.discriminator_ckpt={run['disc_ckpt']}",
        "trainer.accelerator=gpu",
        f"trainer.precision={precision}",
        "trainer.max_epochs=1",
        "optim.optimizer.lr=0.0003",
    ]
    metrics = train(compose_train(tmp_path, overrides))
    assert math.isfinite(metrics["val/ppl"]) and math.isfinite(metrics["test/word_ppl"])
    assert metrics["val/ppl"] < 1.1 * run["metrics"]["val/ppl"]


@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true"])
def test_fsdp_on_one_gpu_trains_and_its_sharded_checkpoint_evaluates(tiny_corpus, tmp_path, precision):
    """trainer=fsdp's code path (nccl, one rank) on CUDA: a finite run whose sharded best.ckpt/ train.py
    evaluates after fitting."""
    overrides = [
        *gpt_overrides(tiny_corpus),
        "trainer=fsdp",
        "trainer.accelerator=gpu",
        "trainer.devices=1",
        f"precision={precision}",
        "trainer.max_epochs=1",
        "logger=none",
    ]
    metrics = train(compose_train(tmp_path, overrides))
    assert (tmp_path / "run" / "checkpoints" / "best.ckpt").is_dir()
    assert math.isfinite(metrics["val/ppl"]) and math.isfinite(metrics["test/ppl"])
