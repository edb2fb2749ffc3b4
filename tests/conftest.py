"""Shared fixtures: the real corpora (LMDISC_DATA_DIR or ../shared/data) and tiny slices of PTB."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import compose_train, corpus_dir, disc_overrides, quick_overrides, write_slice
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
