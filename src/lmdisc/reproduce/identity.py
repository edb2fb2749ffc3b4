"""What a pipeline stage computes, as a value that can be recorded and compared across runs.

A stage's identity is its entry point's config as Hydra composes and resolves it from the stage's
overrides (so an edited conf/experiment/*.yaml or group default counts, while two spellings of
the same overrides, in any order, with `+`/`++` or `1` for `1.0`, do not), flattened to dotted
keys, with:
- each input checkpoint (INPUT_KEYS) replaced by the sha256 of its contents, before resolving, so
  that values interpolated from it (rkl_disc's reference_ckpt) follow: the same file spelled
  another way, or a pipeline directory moved elsewhere, still matches; a re-trained one does not;
- `paths.*` and the interpolations that read the machine or the clock (`${now:}`, `${hydra:}`,
  `${oc.env:}`, `${lmdisc.cwd:}`) replaced by fixed placeholders before resolving, so values built
  from them (data.path, checkpoint directories) do not depend on where or when it runs;
- a tokenizer read from a run directory or file (`data.tokenizer_from`, OPTIONAL_INPUT_KEYS)
  replaced by the sha256 of its tokenizer.json, as an input checkpoint is; a value that names no
  file here (a pretrained model's directory under `${paths.cache_dir}`) is kept as it resolves;
- the keys in IGNORED_KEYS dropped: they say where a stage runs or how it shows its progress,
  not what it computes.
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import functools
import hashlib
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.utils import JobRuntime
from hydra.errors import HydraException
from omegaconf import OmegaConf

from lmdisc.errors import LmdiscError

# the Hydra config each entry point composes
CONFIG_NAMES = {"train": "train", "train_disc": "train_disc", "eval": "eval"}
# keys naming a checkpoint a stage reads: compared by the file's sha256, not its path
INPUT_KEYS = ("init_from", "ckpt", "lm_ckpt", "disc_ckpt", "loss.discriminator_ckpt")
# keys naming a tokenizer file, or a directory holding tokenizer.json: by content when it exists
OPTIONAL_INPUT_KEYS = ("data.tokenizer_from",)
# keys (fnmatch patterns over dotted keys, `*` spans dots; a pattern also covers the keys under
# it) that do not change what a stage computes
IGNORED_KEYS = (
    "paths",  # where corpora, caches and outputs are: the machine, not the computation
    "hydra",  # Hydra's own settings (run directory, search path, logging)
    "task_name",  # names the run's log directory and W&B run
    "logger",  # where metrics are logged (CSV, W&B), not their values
    "callbacks.*progress*",  # the progress bar or text progress lines
    "callbacks.*.dirpath",  # where checkpoints are written (the stage's own directory)
    "callbacks.checkpoint",  # how often last.ckpt is written (for resuming), not what is computed
    "callbacks.last_checkpoint",  # (its name before the preemption callback came)
    "callbacks.preemption",  # saving on SIGTERM / SIGINT
    "trainer.accelerator",  # which device: the grid spreads its runs over the GPUs present
    "trainer.devices",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.default_root_dir",
    "ckpt_path",  # resuming an interrupted run of the same stage
    "metrics_file",  # eval.py: where its metrics.json is written
    "score_out",  # eval.py score_file: where the scores are written
    "device",  # eval.py: which device
)
# resolvers whose value depends on the machine, the directory or the clock
_VOLATILE_RESOLVERS = ("now", "hydra", "oc.env", "lmdisc.cwd")
_NULLS = (None, "", "null", "None")


@functools.cache
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    """Cached by (path, size, mtime): every fine-tuning run names the same base checkpoint."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def file_sha256(path: str | Path) -> str:
    resolved = Path(path).resolve()
    info = resolved.stat()
    return _file_sha256(str(resolved), info.st_size, info.st_mtime_ns)


@contextlib.contextmanager
def fresh_global_hydra(config_dir: str):
    """Hydra's compose API in a global state of its own, the caller's put back after: reproduce.py
    runs inside its own Hydra app (GlobalHydra initialised, refusing a second initialisation), and a
    stage must be composed as its entry point alone would compose it."""
    global_hydra = GlobalHydra.instance()
    saved_hydra, saved_runtime = global_hydra.hydra, copy.deepcopy(JobRuntime.instance().conf)
    global_hydra.clear()
    try:
        with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
            yield
    finally:
        GlobalHydra.instance().hydra = saved_hydra
        JobRuntime.instance().conf = saved_runtime


def _freeze_volatile(text: str) -> str:
    """`${now:%H}` -> `<now>` (and the other volatile resolvers), nested braces included."""
    for name in _VOLATILE_RESOLVERS:
        opening = "${" + name + ":"
        while (start := text.find(opening)) >= 0:
            depth, end = 0, start + 1
            for end in range(start + 1, len(text)):  # from the opening brace to its match
                depth += {"{": 1, "}": -1}.get(text[end], 0)
                if depth == 0:
                    break
            text = text[:start] + f"<{name}>" + text[end + 1 :]
    return text


def _freeze(node):
    if isinstance(node, dict):
        return {key: _freeze(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_freeze(value) for value in node]
    return _freeze_volatile(node) if isinstance(node, str) else node


def _checkpoint_identity(key: str, value) -> str:
    if not Path(str(value)).is_file():
        raise LmdiscError(f"{key}={value}: no such checkpoint (a stage's input must exist before it runs)")
    return "sha256:" + file_sha256(value)


def _tokenizer_file(value: str) -> Path | None:
    path = Path(value)
    if path.is_dir():
        path = path / "tokenizer.json"
    return path if path.is_file() else None


def _flatten(node, prefix: str = "") -> dict:
    if isinstance(node, dict) and node:
        flat = {}
        for key, value in node.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: node}


def is_ignored(key: str) -> bool:
    return any(fnmatch.fnmatchcase(key, p) or fnmatch.fnmatchcase(key, p + ".*") for p in IGNORED_KEYS)


def resolved_identity(entry: str, overrides: list[str], config_dir: str) -> dict:
    """The flat, resolved config of `entry` (train, train_disc, eval) under `overrides`, minus
    IGNORED_KEYS, with input checkpoints as sha256 and no machine- or clock-dependent values."""
    try:
        with fresh_global_hydra(config_dir):
            cfg = compose(CONFIG_NAMES[entry], overrides=list(overrides))
    except HydraException as err:
        raise LmdiscError(f"{entry} with {list(overrides)} does not compose: {err}") from None
    raw = OmegaConf.to_container(cfg, resolve=False)
    raw["paths"] = {key: f"<paths.{key}>" for key in raw.get("paths") or {}}
    raw = _freeze(raw)
    frozen = OmegaConf.create(raw)
    for key in INPUT_KEYS:
        value = OmegaConf.select(frozen, key, default=None, throw_on_resolution_failure=False)
        if value not in _NULLS:
            OmegaConf.update(frozen, key, _checkpoint_identity(key, value), merge=False)
    for key in OPTIONAL_INPUT_KEYS:
        value = OmegaConf.select(frozen, key, default=None, throw_on_resolution_failure=False)
        if value not in _NULLS and (file := _tokenizer_file(str(value))) is not None:
            OmegaConf.update(frozen, key, "sha256:" + file_sha256(file), merge=False)
    resolved = OmegaConf.to_container(frozen, resolve=True)
    return canonical_identity(entry, _flatten(resolved))


def canonical_identity(entry: str, flat: dict) -> dict:
    """A flat identity without its ignored keys and with eval.py's precision under one name
    (`precision`, as before the precision group made it `trainer.precision`), so that identities
    recorded before and after a rename compare equal."""
    flat = dict(flat)
    if entry == "eval" and "trainer.precision" in flat:
        flat["precision"] = flat.pop("trainer.precision")
    return {key: flat[key] for key in sorted(flat) if not is_ignored(key)}


def describe_change(old: dict, new: dict) -> str:
    """How two identities differ, for the log: `+key=value`, `-key=value`, `key: a -> b`."""

    def shown(value) -> str:
        return "<checkpoint>" if str(value).startswith("sha256:") else str(value)

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
