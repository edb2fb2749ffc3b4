"""Atomic file writes: a crash or a full disk never leaves a half-written checkpoint or result."""

from __future__ import annotations

import json
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch


def _umask() -> int:
    """The process umask, read without changing it where Linux shows it (os.umask can only read
    it by setting it, which races with other threads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            line = next(line for line in status if line.startswith("Umask:"))
        return int(line.split()[1], 8)
    except (OSError, StopIteration, ValueError):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


def _mode_for(path: Path) -> int:
    """A replaced file keeps its mode; a new one gets what open() would have given it."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return 0o666 & ~_umask()


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Write to a temporary file beside `path`, then rename it over `path`. The temporary file is
    created private (0600); before the rename it gets the mode a plain write would have left."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, _mode_for(path))
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


def atomic_savez(arrays: dict, path: Path) -> Path:
    """numpy arrays as one .npz (written through a file object: numpy then adds no ".npz" to the
    temporary name)."""
    import numpy as np

    def save(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)

    _atomic_write(Path(path), save)
    return Path(path)


def atomic_savefig(fig, path: Path, dpi: int = 110) -> Path:
    """Save a matplotlib figure as PNG via a temporary file, then close it."""
    path = Path(path)
    try:
        _atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)
    return path
