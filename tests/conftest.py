"""Shared fixtures: the real corpora (LMDISC_DATA_DIR or ../shared/data) and tiny slices of PTB."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import corpus_dir, write_slice


@pytest.fixture(scope="session")
def ptb_dir() -> Path:
    return corpus_dir("ptb")


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory, ptb_dir) -> Path:
    """The first lines of PTB: a real corpus small enough to train on in seconds."""
    return write_slice(ptb_dir, tmp_path_factory.mktemp("tiny"), {"train": 600, "valid": 80, "test": 80})
