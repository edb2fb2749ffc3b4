"""Figures written to files: a headless backend, and one way to finish and save a figure."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from lmdisc.io import atomic_savefig


def headless_pyplot():
    """pyplot on the Agg backend (no display needed: CI, servers, subprocesses)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, axes: Iterable, path: Path) -> Path:
    """A light grid and a legend on each axis, a tight layout, then an atomic write."""
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return atomic_savefig(fig, path)
