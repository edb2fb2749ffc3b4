"""Shared fixtures: the real corpora (LMDISC_DATA_DIR or ../shared/data) and tiny slices of PTB."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import (
    compose_train,
    corpus_dir,
    disc_overrides,
    gpt_overrides,
    hf_overrides,
    make_tiny_hf_models,
    quick_overrides,
    write_slice,
)
from lmdisc.cli.train import train
from lmdisc.cli.train_disc import train_discriminator


@pytest.fixture(scope="session")
def ptb_dir() -> Path:
    return corpus_dir("ptb")


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory, ptb_dir) -> Path:
    """The first lines of PTB: a real corpus small enough to train on in seconds."""
    return write_slice(ptb_dir, tmp_path_factory.mktemp("tiny"), {"train": 600, "valid": 80, "test": 80})


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, tiny_corpus):
    """Three epochs of a small LSTM on the first 600 lines of PTB; its checkpoints feed later tests."""
    tmp = tmp_path_factory.mktemp("trained")
    cfg = compose_train(
        tmp, [*quick_overrides(tiny_corpus), "trainer.max_epochs=3", "optim.optimizer.lr=5", "seed=7"]
    )
    metrics = train(cfg)
    return tmp / "run", metrics


@pytest.fixture(scope="session")
def trained_disc(trained_run, tmp_path_factory):
    run_dir, _ = trained_run
    tmp = tmp_path_factory.mktemp("disc")
    cfg = compose_train(
        tmp,
        [
            *disc_overrides(run_dir / "checkpoints" / "best.ckpt"),
            "trainer.max_epochs=3",
            "optim.optimizer.lr=0.001",
            # on the LM's own training text the discriminator over-fits at once (DESIGN.md §4)
            "discriminator.train_split=heldout",
        ],
        "train_disc",
    )
    return train_discriminator(cfg)


@pytest.fixture(scope="session")
def tiny_hf_models(tmp_path_factory, tiny_corpus) -> dict[str, Path]:
    return make_tiny_hf_models(tmp_path_factory.mktemp("hf_models"), tiny_corpus)


def _run_with_discriminator(tmp_path_factory, name: str, overrides: list[str]):
    """Train a transformer for two epochs, then a frequency-class discriminator of it (rkl_disc's inputs)."""
    tmp = tmp_path_factory.mktemp(name)
    metrics = train(compose_train(tmp / "lm", [*overrides, "trainer.max_epochs=2", "seed=3"]))
    lm_ckpt = tmp / "lm" / "run" / "checkpoints" / "best.ckpt"
    disc = [*disc_overrides(lm_ckpt, "freq_class"), "trainer.max_epochs=3", "optim.optimizer.lr=0.01"]
    disc_metrics = train_discriminator(compose_train(tmp / "disc", disc, "train_disc"))
    return {
        "lm_ckpt": lm_ckpt,
        "metrics": metrics,
        "disc_ckpt": disc_metrics["checkpoint"],
        "run_dir": tmp / "lm" / "run",
    }


@pytest.fixture(scope="session")
def gpt_run(tmp_path_factory, tiny_corpus):
    """A tiny GPT with a BPE tokenizer trained on the PTB slice, and a discriminator of it."""
    return _run_with_discriminator(tmp_path_factory, "gpt", gpt_overrides(tiny_corpus))


@pytest.fixture(scope="session")
def hf_run(tmp_path_factory, tiny_corpus, tiny_hf_models):
    """The tiny Llama fine-tuned through model=hf, and a discriminator of it."""
    return _run_with_discriminator(tmp_path_factory, "hf", hf_overrides(tiny_corpus, tiny_hf_models["llama"]))
