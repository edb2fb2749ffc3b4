"""What a pipeline stage computes, as a value that can be recorded and compared across runs.

Two override lists that Hydra would turn into the same run must give the same identity, or a
finished stage is needlessly run again: keys are unordered (Hydra applies key overrides after
composing, whatever their order), the last value of a key wins, `+`/`++` prefixes are dropped,
numbers are compared as numbers (1 == 1.0), and a checkpoint is compared by its contents (so
the same file spelled another way, or a pipeline directory moved elsewhere, still matches).
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from lmdisc.errors import LmdiscError

# overrides naming a checkpoint a stage reads: compared by the file's sha256, not its path
INPUT_KEYS = frozenset({"init_from", "ckpt", "lm_ckpt", "disc_ckpt", "loss.discriminator_ckpt"})
_NULLS = ("", "null", "None")


@functools.cache
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    """Cached by (path, size, mtime): every fine-tuning run names the same base checkpoint."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def file_sha256(path: str | Path) -> str:
    resolved = Path(path).resolve()
    info = resolved.stat()
    return _file_sha256(str(resolved), info.st_size, info.st_mtime_ns)


def _value(key: str, value: str) -> str:
    if key in INPUT_KEYS and value not in _NULLS:
        if not Path(value).is_file():
            raise LmdiscError(
                f"{key}={value}: no such checkpoint (a stage's input must exist before it runs)"
            )
        return "sha256:" + file_sha256(value)
    try:
        return format(float(value), ".15g")
    except ValueError:
        return value


def override_identity(overrides: list[str]) -> dict[str, str | None]:
    """key -> normalised value (None for a `~key` deletion), sorted by key."""
    identity: dict[str, str | None] = {}
    for override in overrides:
        if override.startswith("~"):
            identity[override[1:].partition("=")[0]] = None
            continue
        key, _, value = override.lstrip("+").partition("=")
        identity[key] = _value(key, value)
    return dict(sorted(identity.items()))


def describe_change(old: dict, new: dict) -> str:
    """How two identities differ, for the log: `+key=value`, `-key=value`, `key: a -> b`."""

    def shown(value) -> str:
        return "<deleted>" if value is None else ("<checkpoint>" if value.startswith("sha256:") else value)

    changes = []
    for key in sorted(old.keys() | new.keys()):
        if key not in old:
            changes.append(f"+{key}={shown(new[key])}")
        elif key not in new:
            changes.append(f"-{key}={shown(old[key])}")
        elif old[key] != new[key]:
            both_files = all(str(v).startswith("sha256:") for v in (old[key], new[key]))
            changes.append(
                f"{key} content changed" if both_files else f"{key}: {shown(old[key])} -> {shown(new[key])}"
            )
    return ", ".join(changes) or "no difference"
