"""Window protocols: how a split is cut for training and how it is scored (DESIGN.md §3).

- `StreamProtocol` (recurrent models): contiguous columns, BPTT windows, the state carried from
  window to window; evaluation is the standard protocol (validation in 10 columns, test in 1).
- `BlockProtocol` (transformers): random-offset blocks for training, a sliding window with a stride
  for evaluation; no state crosses a window.

Both turn a `TokenizedSplit` into a DataLoader of `Window`s; `carries_state` tells the one window
loop (`lmdisc.window_loop`) whether to carry the model's state across them.
"""

from __future__ import annotations

import math

from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from lmdisc.errors import LmdiscError

from .blocks import StridedWindows, TrainingBlocks, collate_windows, epoch_offset
from .corpus import TokenizedSplit
from .resumable import SkipFirst, loader_generator
from .stream import BPTTSampler, StreamDataset, layout_stream

PROTOCOLS = ("auto", "stream", "blocks")


class StreamProtocol:
    name = "stream"
    carries_state = True
    # the standard evaluation protocol's batch sizes (comparable with published PTB/WikiText numbers)
    standard_batch_sizes = {"valid": 10, "test": 1}

    def __init__(self, bptt: int, variable: bool = False, seed: int = 0):
        self.bptt, self.variable, self.seed = bptt, variable, seed
        self.window_length = bptt

    def loader(
        self,
        split: TokenizedSplit,
        batch_size: int,
        train: bool = False,
        rank: int = 0,
        world: int = 1,
        epoch: int = 0,
        num_workers: int = 0,
        skip: int = 0,
    ) -> DataLoader:
        """`skip`: windows of this epoch already trained on (a mid-epoch resume)."""
        layout = layout_stream(split.ids, batch_size, rank, world, split.word_weight)
        variable = self.variable and train
        sampler = BPTTSampler(layout.length, self.bptt, variable, self.seed)
        # Lightning counts an epoch's batches when it builds the loader, before set_epoch: draw
        # this epoch's lengths now (train.py reloads the loader every epoch)
        sampler.set_epoch(epoch)
        return DataLoader(
            StreamDataset(layout),
            sampler=SkipFirst(sampler, skip) if skip else sampler,
            batch_size=None,
            num_workers=num_workers,
            generator=loader_generator(self.seed),
        )

    def eval_batch_size(self, split: str, configured: int) -> int:
        return self.standard_batch_sizes.get(split, configured)

    def longest_window(self, tokens: int, batch_size: int) -> int:
        """The longest window a stream of `tokens` gives: a column is shorter than bptt on a short split."""
        return min(self.bptt, math.ceil(max(tokens - 1, 1) / batch_size))

    def describe(self) -> str:
        return f"stream protocol (BPTT {self.bptt}, state carried; validation in 10 columns, test in 1)"


class BlockProtocol:
    name = "blocks"
    carries_state = False

    def __init__(self, block_size: int, eval_stride: int | None = None, seed: int = 0):
        stride = block_size // 2 if eval_stride is None else eval_stride
        if isinstance(stride, bool) or not isinstance(stride, int) or not 0 < stride <= block_size:
            raise LmdiscError(
                f"data.eval_stride must be a whole number in 1..data.block_size ({block_size}), got {eval_stride!r}"
            )
        self.block_size, self.stride, self.seed = block_size, stride, seed
        self.window_length = block_size

    def loader(
        self,
        split: TokenizedSplit,
        batch_size: int,
        train: bool = False,
        rank: int = 0,
        world: int = 1,
        epoch: int = 0,
        num_workers: int = 0,
        skip: int = 0,
    ) -> DataLoader:
        """`skip`: batches of this epoch already trained on (a mid-epoch resume)."""
        generator = loader_generator(self.seed)
        if train:
            offset = epoch_offset(self.seed, epoch, self.block_size, len(split))
            blocks = TrainingBlocks(split.ids, split.word_weight, self.block_size, offset)
            if len(blocks) == 0:
                raise LmdiscError(
                    f"data.block_size={self.block_size} is longer than the training text ({len(split):,} "
                    "tokens): lower data.block_size"
                )
            sampler = DistributedSampler(blocks, num_replicas=world, rank=rank, shuffle=True, seed=self.seed)
            sampler.set_epoch(epoch)
            return DataLoader(
                blocks,
                batch_size,
                sampler=SkipFirst(sampler, skip * batch_size) if skip else sampler,
                num_workers=num_workers,
                drop_last=False,
                generator=generator,
            )
        windows = StridedWindows(split.ids, split.word_weight, self.block_size, self.stride)
        # every rank scores its own contiguous share of the windows, none twice; shares are padded to
        # one length with windows that score nothing (FSDP gathers weights in every forward: ranks
        # must run as many as each other)
        spans = windows.spans
        first, last = rank * len(spans) // world, (rank + 1) * len(spans) // world
        windows.spans = spans[first:last]
        if spans:
            begin, end, _ = spans[-1]
            windows.spans += [(begin, end, end + 1)] * (-(-len(spans) // world) - (last - first))
        return DataLoader(
            windows, batch_size, collate_fn=collate_windows, num_workers=num_workers, generator=generator
        )

    def eval_batch_size(self, split: str, configured: int) -> int:
        return configured

    def longest_window(self, tokens: int, batch_size: int) -> int:
        return min(self.block_size, max(tokens - 1, 1))

    def describe(self) -> str:
        return f"blocks protocol (context {self.block_size}, evaluation stride {self.stride})"


def choose_protocol(
    requested: str,
    model,
    bptt: int = 35,
    variable_bptt: bool = False,
    block_size: int = 256,
    eval_stride: int | None = None,
    seed: int = 0,
) -> StreamProtocol | BlockProtocol:
    """The protocol for `model`: `auto` is stream for a recurrent model, blocks for a transformer.
    A window longer than the model's maximum positions is refused."""
    if requested not in PROTOCOLS:
        raise LmdiscError(f"data.protocol must be one of {list(PROTOCOLS)}, got {requested!r}")
    name = requested
    if name == "auto":
        name = "stream" if getattr(model, "carries_state", True) else "blocks"
    protocol = (
        StreamProtocol(bptt, variable_bptt, seed)
        if name == "stream"
        else BlockProtocol(block_size, eval_stride, seed)
    )
    limit = getattr(model, "max_positions", None)
    if limit is not None and protocol.window_length > limit:
        key = "data.block_size" if name == "blocks" else "data.bptt"
        raise LmdiscError(
            f"{key}={protocol.window_length} is longer than the model's maximum positions ({limit:,})"
        )
    return protocol
