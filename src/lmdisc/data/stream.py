"""The `stream` window protocol for recurrent LMs: one token stream, `batch_size` contiguous
columns, BPTT windows read in order with the state carried.

Layout. A split is one id stream x_0..x_n. Inputs are x_0..x_{n-1} and targets x_1..x_n, so
every token except the first is a target exactly once. Under DDP the (input, target) pairs are
first cut into `world_size` contiguous shards, one per rank; a shard is then cut into
`batch_size` contiguous columns, read top to bottom in windows of `bptt` steps, with the
recurrent state carried from one window to the next. A column that runs short is padded at its
end with targets equal to `IGNORE_INDEX`, which every loss and metric skips.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from .window import IGNORE_INDEX, Window


@dataclass
class StreamLayout:
    """A split laid out as [batch_size, length] columns of inputs, targets, word weights, positions."""

    inputs: torch.Tensor
    targets: torch.Tensor
    words: torch.Tensor
    positions: torch.Tensor

    @property
    def length(self) -> int:
        return self.inputs.shape[1]


def layout_stream(
    stream: torch.Tensor,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    word_weight: torch.Tensor | None = None,
) -> StreamLayout:
    """This rank's contiguous shard of the stream, cut into `batch_size` columns.

    `word_weight[i]`: how many words token i ends (default 1 per token, as for a word tokenizer).
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world of size {world_size}")
    pairs = stream.numel() - 1
    per_rank = math.ceil(pairs / world_size)
    per_column = math.ceil(per_rank / batch_size)
    if per_column == 0:
        raise ValueError(f"a stream of {stream.numel()} tokens is too short for {world_size} ranks")
    start = min(rank * per_rank, pairs)
    stop = min(start + per_rank, pairs)
    size = batch_size * per_column
    inputs = torch.zeros(size, dtype=torch.long)
    targets = torch.full((size,), IGNORE_INDEX, dtype=torch.long)
    positions = torch.full((size,), -1, dtype=torch.long)
    words = torch.zeros(size, dtype=torch.float32)
    n = stop - start
    inputs[:n] = stream[start:stop]
    targets[:n] = stream[start + 1 : stop + 1]
    positions[:n] = torch.arange(start + 1, stop + 1)
    words[:n] = 1.0 if word_weight is None else word_weight[start + 1 : stop + 1]
    shape = (batch_size, per_column)
    return StreamLayout(inputs.view(shape), targets.view(shape), words.view(shape), positions.view(shape))


def bptt_windows(
    length: int,
    bptt: int,
    variable: bool = False,
    rng: np.random.Generator | None = None,
    min_len: int = 5,
    full_prob: float = 0.95,
    std: float = 5.0,
) -> list[tuple[int, int]]:
    """(start, seq_len) of each window over a column of `length` steps.

    Variable lengths follow AWD-LSTM: with probability `full_prob` the mean is `bptt`, else
    `bptt / 2`; the length is drawn from N(mean, std) and floored at `min_len`. The trainer
    scales the learning rate by seq_len / bptt for that step.
    """
    if bptt <= 0:
        raise ValueError(f"bptt must be positive, got {bptt}")
    windows = []
    start = 0
    while start < length:
        seq_len = bptt
        if variable:
            assert rng is not None, "variable BPTT needs a random generator"
            mean = bptt if rng.random() < full_prob else bptt / 2
            seq_len = max(min_len, int(rng.normal(mean, std)))
        seq_len = min(seq_len, length - start)
        windows.append((start, seq_len))
        start += seq_len
    return windows


class StreamDataset(Dataset):
    """Map-style dataset whose index is a (start, seq_len) window: returns that `Window` of all columns."""

    def __init__(self, layout: StreamLayout):
        self.layout = layout

    def __getitem__(self, window: tuple[int, int]) -> Window:
        start, seq_len = window
        cut = slice(start, start + seq_len)
        lay = self.layout
        return Window(lay.inputs[:, cut], lay.targets[:, cut], lay.words[:, cut], lay.positions[:, cut])


class BPTTSampler(Sampler):
    """Yields the windows of one epoch in stream order (state is carried, so never shuffled).

    Lightning calls `set_epoch`, so variable BPTT lengths depend on (seed, epoch) only: every
    rank draws the same lengths, and a resumed run draws what an uninterrupted one would.
    """

    def __init__(self, length: int, bptt: int, variable: bool = False, seed: int = 0):
        self.length = length
        self.bptt = bptt
        self.variable = variable
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        rng = np.random.default_rng([self.seed, epoch]) if self.variable else None
        self.windows = bptt_windows(self.length, self.bptt, self.variable, rng)

    def __iter__(self):
        return iter(self.windows)

    def __len__(self) -> int:
        return len(self.windows)
