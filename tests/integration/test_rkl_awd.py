"""rkl_disc and train_disc.py with the other LM family (AWD-LSTM), on a tiny slice of PTB."""

import copy

import pytest
import torch

from helpers import compose_train, disc_overrides, quick_overrides
from lmdisc.checkpoint import build_model, load_checkpoint
from lmdisc.cli.train import train
from lmdisc.cli.train_disc import train_discriminator
from lmdisc.losses import BatchContext, ReverseKLLoss
from lmdisc.models.discriminator import build_discriminator

pytestmark = pytest.mark.slow

AWD_SMALL = ["model.emb_size=16", "model.hidden_size=24", "optim=asgd", "data.variable_bptt=true"]


@pytest.fixture(scope="module")
def awd_ckpt(tmp_path_factory, tiny_corpus):
    tmp = tmp_path_factory.mktemp("awd")
    overrides = [
        *quick_overrides(tiny_corpus, "awd_lstm"),
        *AWD_SMALL,
        "trainer.max_epochs=1",
        "evaluate=false",
    ]
    train(compose_train(tmp, overrides))
    return tmp / "run" / "checkpoints" / "best.ckpt"


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_rkl_control_fast_dev_run_from_an_awd_lstm(awd_ckpt, tiny_corpus, tmp_path, precision):
    overrides = [
        *quick_overrides(tiny_corpus, "awd_lstm"),
        *AWD_SMALL,
        "loss=rkl_disc",
        "loss.discriminator=none",
        f"init_from={awd_ckpt}",
        f"trainer.precision={precision}",
        "trainer.fast_dev_run=true",
        "logger=none",
    ]
    assert train(compose_train(tmp_path, overrides))["global_step"] == 1


@pytest.mark.parametrize("encoder", ["lm_frozen", "lm_copy"])
def test_train_disc_fast_dev_run_against_an_awd_lstm(awd_ckpt, tmp_path, encoder):
    overrides = [
        *disc_overrides(awd_ckpt, encoder),
        "trainer.fast_dev_run=true",
        "discriminator.train_split=heldout",
        "trainer.precision=bf16-mixed",
    ]
    assert train_discriminator(compose_train(tmp_path, overrides, "train_disc"))["train_split"] == "heldout"


def test_rkl_term_with_an_awd_lstm_and_its_frozen_features(awd_ckpt):
    """The shared-features fast path holds for AWD-LSTM too (weight drop, locked dropout off in eval)."""
    q0 = build_model(load_checkpoint(awd_ckpt))
    disc = build_discriminator("lm_frozen", q0.vocab_size, q0)
    torch.nn.init.normal_(disc.head.weight, std=0.5)
    shared = ReverseKLLoss(copy.deepcopy(q0), copy.deepcopy(disc))
    separate = ReverseKLLoss(copy.deepcopy(q0), copy.deepcopy(disc))
    separate.shared_body = False
    assert shared.shared_body
    student = copy.deepcopy(q0).train()
    inputs = torch.randint(0, q0.vocab_size, (4, 7))
    grads = []
    for loss in (shared, separate):
        student.zero_grad()
        torch.manual_seed(0)  # the same dropout masks for both
        logits, _, _ = student(inputs)
        out = loss(logits, inputs, BatchContext(inputs=inputs, first_window=True, diagnostics=False))
        out.loss.backward()
        grads.append(student.decoder.bias.grad.clone())
        assert torch.isfinite(out.loss)
    assert grads[0].abs().sum() > 0
    assert torch.allclose(grads[0], grads[1], atol=1e-6)
