"""The unit every loop reads: a window of a token stream, with what each target is worth."""

from __future__ import annotations

from typing import NamedTuple

import torch

IGNORE_INDEX = -100


class Window(NamedTuple):
    """Inputs [B, T] and their next tokens; a target of IGNORE_INDEX is not scored (padding, or a
    context-only token of a sliding evaluation window).

    `words[b, t]` is how many words target (b, t) ends (word-level perplexity sums it) and
    `positions[b, t]` the target's index in its split (-1 where not scored), so per-token results can
    be put back in text order.
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    words: torch.Tensor
    positions: torch.Tensor

    @property
    def scored(self) -> torch.Tensor:
        return self.targets != IGNORE_INDEX
