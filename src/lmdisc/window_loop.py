"""The one window loop: how every consumer runs a model over a split's windows.

Training and validation (inside Lightning's loops), `eval.py`'s protocols, per-token scoring,
the frequency buckets, the discriminator and its refresh all read windows through a `Reader`,
which carries a recurrent model's state from one window to the next (detached, so gradients
stop at the window: truncated BPTT) and gives a transformer none. Outside Lightning,
`read_windows` walks a loader with one or more readers and prints progress on long splits.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator

import torch

from lmdisc.data.window import Window
from lmdisc.models.base import State, detach_state


class Reader:
    """Runs `module(inputs, state) -> (out, state, extras)` over consecutive windows of one stream.

    `carry=False` (transformers, sliding windows) starts every window without state; an HF cache is
    never carried. `reset()` starts a new stream (a new epoch, a new split).
    """

    def __init__(self, module: torch.nn.Module, carry: bool = True):
        self.module = module
        self.carry = carry
        self.state: State = None

    def reset(self) -> None:
        self.state = None

    @property
    def first_window(self) -> bool:
        return self.state is None

    def __call__(self, inputs: torch.Tensor, method: Callable | None = None):
        """(out, extras) of the module (or of `method`, e.g. `model.features`) on this window; the new
        state is kept for the next one, detached from this window's graph."""
        run = method or self.module
        out, state, extras = run(inputs, self.state if self.carry else None)
        self.state = detach_state(state) if self.carry else None
        return out, extras


def _progress_line(done: int, total: int | None, tokens: int, seconds: float) -> str:
    rate = tokens / max(seconds, 1e-9)
    if not total:
        return f"window {done:,} · {rate:,.0f} tok/s"
    left = seconds / done * (total - done)
    return f"window {done:,}/{total:,} ({100 * done / total:.0f}%) · {rate:,.0f} tok/s · ~{left:.0f} s left"


def read_windows(
    loader: Iterable[Window],
    device: torch.device | str = "cpu",
    progress: Callable[[str], None] | None = None,
    progress_every_s: float = 60.0,
) -> Iterator[Window]:
    """The windows of `loader` on `device`, in order; with `progress`, a line every `progress_every_s`
    seconds (a test split read in one column takes minutes on a large vocabulary, and a log should
    not look hung meanwhile)."""
    start = last_line = time.perf_counter()
    total = len(loader) if hasattr(loader, "__len__") else None
    tokens = 0
    for index, window in enumerate(loader, 1):
        yield Window(*(t.to(device, non_blocking=True) for t in window))
        tokens += int(window.scored.sum())
        now = time.perf_counter()
        if progress is not None and now - last_line >= progress_every_s:
            last_line = now
            progress(_progress_line(index, total, tokens, now - start))
