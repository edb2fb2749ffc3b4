"""Atomic file writes: a crash or a full disk never leaves a half-written checkpoint or result."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# read once, at import: os.umask can only be read by setting it, which is not thread-safe
_FILE_MODE = 0o666 & ~_umask()


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Write to a temporary file beside `path`, then rename it over `path`. The temporary file is
    created private (0600); it gets the mode a plain open() would have given before the rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, _FILE_MODE)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_torch_save(obj: object, path: Path) -> None:
    _atomic_write(path, lambda tmp: torch.save(obj, tmp))


def atomic_write_text(text: str, path: Path) -> None:
    _atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_write_json(obj: object, path: Path) -> None:
    atomic_write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", path)


def atomic_savefig(fig, path: Path, dpi: int = 110) -> Path:
    """Save a matplotlib figure as PNG via a temporary file, then close it."""
    path = Path(path)
    try:
        _atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)
    return path
