"""The one validator: each numeric option refused out of its range, by name, with the range."""

import pytest
from omegaconf import OmegaConf

from lmdisc.errors import LmdiscError
from lmdisc.validation import validate

BASE = {
    "seed": 1,
    "optim": {"optimizer": {"lr": 0.1}},
    "loss": {"alpha": 0.001, "terms": {"ce": {"weight": 1.0}, "ppl": {"weight": "${loss.alpha}"}}},
    "trainer": {"gradient_clip_val": 0.25, "max_epochs": 3},
    "data": {"batch_size": 20, "block_size": None},
}


def _cfg(**dotted):
    cfg = OmegaConf.create(BASE)
    for key, value in dotted.items():
        OmegaConf.update(cfg, key.replace("__", "."), value)
    return cfg


def test_the_defaults_pass():
    validate(_cfg())
    validate(_cfg(trainer__gradient_clip_val=None))  # null: no clipping
    validate(_cfg(trainer__gradient_clip_val=0))
    validate(_cfg(loss__alpha=0))  # 0 switches the term off


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("optim.optimizer.lr", float("nan"), r"optim.optimizer.lr must be a finite number > 0, got nan"),
        ("optim.optimizer.lr", float("inf"), r"optim.optimizer.lr must be a finite number > 0, got inf"),
        ("optim.optimizer.lr", 0, r"optim.optimizer.lr must be a finite number > 0, got 0"),
        ("optim.optimizer.lr", True, r"optim.optimizer.lr must be a finite number > 0, got True"),
        ("loss.alpha", float("nan"), r"loss.alpha must be a finite number >= 0 \(0 switches"),
        ("loss.alpha", -0.5, r"loss.alpha must be a finite number >= 0"),
        ("loss.terms.ce.weight", -1, r"loss.terms.ce.weight must be a finite number >= 0"),
        ("trainer.gradient_clip_val", -1, r"trainer.gradient_clip_val must be a finite number >= 0 or null"),
        ("seed", "abc", r"seed must be an integer, got 'abc'"),
        ("seed", 1.5, r"seed must be an integer, got 1.5"),
        ("data.batch_size", 2.5, r"data.batch_size must be a whole number >= 1, got 2.5"),
        ("data.block_size", 0, r"data.block_size must be a whole number >= 1 or null, got 0"),
    ],
)
def test_out_of_range_values_are_refused_by_name(key, value, message):
    cfg = _cfg()
    OmegaConf.update(cfg, key, value)
    with pytest.raises(LmdiscError, match=message):
        validate(cfg)


def test_a_weight_that_interpolates_a_bad_alpha_is_caught_through_the_alpha():
    cfg = _cfg(loss__alpha=float("nan"))
    with pytest.raises(LmdiscError, match=r"loss\.alpha"):
        validate(cfg)


def test_fp16_autocast_is_refused_on_a_cpu():
    with pytest.raises(
        LmdiscError, match=r"precision=16-mixed .* needs a GPU; on a CPU use precision=bf16-mixed"
    ):
        validate(_cfg(trainer__precision="16-mixed", trainer__accelerator="cpu"))


def test_an_unknown_precision_is_refused_with_the_list():
    with pytest.raises(LmdiscError, match=r"trainer.precision must be one of \['32-true', 'bf16-mixed'"):
        validate(_cfg(trainer__precision="fp8"))


def test_more_gpus_than_present_are_refused(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(LmdiscError, match=r"trainer.devices=4 asks for 4 GPUs and this machine has 1"):
        validate(_cfg(trainer__accelerator="gpu", trainer__devices=4))
    validate(_cfg(trainer__accelerator="gpu", trainer__devices=1))


def test_more_cpu_processes_than_cores_and_bf16_true_training_only_warn(monkeypatch):
    import os

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    with pytest.warns(UserWarning, match=r"trainer.devices=4 CPU processes on 2 cores"):
        validate(_cfg(trainer__accelerator="cpu", trainer__devices=4))
    with pytest.warns(UserWarning, match=r"bf16-true keeps no fp32 master weights"):
        validate(_cfg(trainer__precision="bf16-true"))
