"""What a checkpoint needs, beyond Lightning's own state, for a mid-epoch resume to continue exactly
as the uninterrupted run would have.

Lightning saves weights, optimiser, schedulers and loop counters, but no random-number state, and
our loaders restart their epoch. `process_state` captures what each process holds at a step
boundary: the RNG states (Python, NumPy, torch, CUDA: dropout draws from torch's), the recurrent
state carried into the next training window, and the running sums of the epoch's training
perplexity. Processes differ (each reads its own shard), so a checkpoint holds one entry per rank,
gathered at save time. The loader's position (batches done this epoch) is the data module's
state (`LMDataModule.state_dict`). Everything is tensors and primitives: `weights_only=True` loads it.
"""

from __future__ import annotations

import random

import numpy as np
import torch
import torch.distributed as dist


def rng_state() -> dict:
    """This process's random-number generators, as tensors and primitives."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(mt), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def gather_from_ranks(entry: dict) -> list[dict]:
    """Every rank's `entry`, in rank order (a list of one without a process group)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [entry]
    entries: list = [None] * dist.get_world_size()
    dist.all_gather_object(entries, entry)
    return entries


def this_ranks(entries: list[dict] | None) -> dict | None:
    """This process's entry of a checkpoint saved by as many processes; None when the number of
    processes changed (the run then continues, exact no longer)."""
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if not entries or len(entries) != world:
        return None
    return entries[rank]


def move_state(state, device: torch.device | str):
    """A recurrent state (a tensor, or nested tuples and lists of them) on `device`."""
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return state.to(device)
    return type(state)(move_state(s, device) for s in state)


# what makes the data another corpus or other training windows (the path may move between
# machines, and seed, noise or loader workers change how training goes on, not what it is on)
_DATA_IDENTITY = (
    "name",
    "source",
    "tokenizer",
    "vocab_size",
    "detokenize",
    "protocol",
    "batch_size",
    "bptt",
    "variable_bptt",
    "block_size",
    "train_split",
    "heldout_fraction",
)


def refuse_other_run(saved: dict, current: dict, path: str) -> None:
    """Refuse to resume `path` into a run of another model or data (it would load mismatched weights
    or continue on other windows); `saved` and `current` are the resolved run configs."""
    from lmdisc.errors import LmdiscError

    for group in ("model", "data"):
        before, now = saved.get(group) or {}, current.get(group) or {}
        for key in sorted(set(before) | set(now)):
            if (group == "data" and key not in _DATA_IDENTITY) or before.get(key) == now.get(key):
                continue
            raise LmdiscError(
                f"ckpt_path={path} was trained with {group}.{key}={before.get(key)!r} and this run has "
                f"{now.get(key)!r}: resume with the same {group} options (init_from= starts a new run "
                "from its weights)"
            )
