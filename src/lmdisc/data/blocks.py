"""The `blocks` window protocol for transformers: no state crosses a window.

Training reads `block_size`-token blocks cut from the stream at a random offset drawn for each
epoch from (seed, epoch), shuffled, and shared out between ranks by a `DistributedSampler`.
Evaluation slides a window of `block_size` tokens over the stream by `stride` tokens: each
window scores only the targets no earlier window scored, so every token after the first is
scored exactly once, each with the longest left context the window grid gives it (at least
`block_size - stride` tokens, once there are that many). The other targets of a window are its
context and are masked out. With stride = block_size the windows are disjoint blocks.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from .window import IGNORE_INDEX, Window


class TrainingBlocks(Dataset):
    """Block k holds inputs x[o + kL : o + (k+1)L] and their next tokens, o = `offset`, L = `block_size`."""

    def __init__(self, stream: torch.Tensor, word_weight: torch.Tensor, block_size: int, offset: int = 0):
        self.stream, self.word_weight = stream, word_weight
        self.block_size, self.offset = block_size, offset
        self.count = max((stream.numel() - 1 - offset) // block_size, 0)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, k: int) -> Window:
        start = self.offset + k * self.block_size
        stop = start + self.block_size
        positions = torch.arange(start + 1, stop + 1)
        return Window(
            self.stream[start:stop], self.stream[start + 1 : stop + 1], self.word_weight[positions], positions
        )


def epoch_offset(seed: int, epoch: int, block_size: int, tokens: int) -> int:
    """The random start of an epoch's blocks: a function of (seed, epoch) alone, so every rank and a
    resumed run cut the same blocks. Below `block_size`, and small enough that a stream of `tokens`
    still gives at least one block."""
    return int(np.random.default_rng([seed, epoch, 7]).integers(max(min(block_size, tokens - block_size), 1)))


def strided_spans(tokens: int, block_size: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first scored target) of each window over a stream of `tokens` tokens.

    A window reads inputs x[begin:end] and predicts x[begin+1 : end+1]; it scores the targets at
    positions first..end (earlier ones were scored by earlier windows).
    """
    last = tokens - 1  # the last target position
    spans = []
    scored_to = 0
    while scored_to < last:
        end = min(scored_to + (stride if spans else block_size), last)
        begin = max(0, end - block_size)
        spans.append((begin, end, scored_to + 1))
        scored_to = end
    return spans


class StridedWindows(Dataset):
    """The sliding evaluation windows of one stream (`strided_spans`), each as an unbatched `Window`."""

    def __init__(self, stream: torch.Tensor, word_weight: torch.Tensor, block_size: int, stride: int):
        self.stream, self.word_weight = stream, word_weight
        self.spans = strided_spans(stream.numel(), block_size, stride)

    def __len__(self) -> int:
        return len(self.spans)

    def __getitem__(self, k: int) -> Window:
        begin, end, first = self.spans[k]
        positions = torch.arange(begin + 1, end + 1)
        targets = self.stream[begin + 1 : end + 1].clone()
        context = positions < first
        targets[context] = IGNORE_INDEX
        words = self.word_weight[positions].masked_fill(context, 0.0)
        return Window(self.stream[begin:end], targets, words, positions.masked_fill(context, -1))


def collate_windows(windows: list[Window]) -> Window:
    """Stack windows, padding shorter ones at the end (inputs 0, targets ignored): a causal model's
    outputs before the padding do not depend on it."""
    length = max(w.inputs.numel() for w in windows)
    batch = len(windows)
    out = Window(
        torch.zeros(batch, length, dtype=torch.long),
        torch.full((batch, length), IGNORE_INDEX, dtype=torch.long),
        torch.zeros(batch, length, dtype=torch.float32),
        torch.full((batch, length), -1, dtype=torch.long),
    )
    for row, w in enumerate(windows):
        n = w.inputs.numel()
        for field, value in zip(out, w):
            field[row, :n] = value
    return out
