"""Training loaders that resume mid-epoch: the epoch's first batches are skipped, not replayed.

Lightning restores its loop counters from a checkpoint but restarts a plain DataLoader at the
epoch's first batch. `SkipFirst` wraps a loader's sampler so that iteration starts after the
batches already done while the length stays the epoch's full length, which is what Lightning's
batch counting expects of a resumed loader (it adds the batches already done to what it fetches).
Skipping happens at the index level: the skipped windows are never read, noised or collated.
"""

from __future__ import annotations

import itertools

import torch
from torch.utils.data import Sampler


class SkipFirst(Sampler):
    """`sampler` without its first `count` indices in its first pass only (the resumed epoch: a
    loader that is not rebuilt every epoch reads the next epochs whole); `len` is the whole epoch's."""

    def __init__(self, sampler: Sampler, count: int):
        self.sampler, self.count = sampler, count

    def set_epoch(self, epoch: int) -> None:
        if callable(getattr(self.sampler, "set_epoch", None)):
            self.sampler.set_epoch(epoch)

    def __iter__(self):
        count, self.count = self.count, 0
        return itertools.islice(iter(self.sampler), count, None)

    def __len__(self) -> int:
        return len(self.sampler)


def loader_generator(seed: int) -> torch.Generator:
    """A DataLoader's own generator: creating an iterator draws its base seed from it, not from
    torch's global generator, so starting an epoch (or a validation) does not shift the dropout
    draws of training, and a resumed run draws what the uninterrupted one drew."""
    return torch.Generator().manual_seed(seed)
