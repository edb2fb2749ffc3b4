"""Token embedding with rows for input-only ids (a word tokenizer's `<blank>`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TokenEmbedding(nn.Embedding):
    """`nn.Embedding` over the `vocab_size` predicted ids, plus `input_only` rows for ids from
    `vocab_size` on, which the model reads but never predicts.

    The extra rows live in their own zero-initialised Parameter (`extra`), so `weight` keeps the
    [vocab_size, dim] shape an output layer can be tied to, and building or initialising the model
    draws exactly the random numbers it drew without them.
    """

    def __init__(self, vocab_size: int, dim: int, input_only: int = 0):
        super().__init__(vocab_size, dim)
        self.extra = nn.Parameter(torch.zeros(input_only, dim)) if input_only else None

    def lookup(self, tokens: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """Embed `tokens` with `weight` in place of the main rows (AWD's embedding dropout passes a
        row-dropped copy)."""
        weight = self.weight if weight is None else weight
        if self.extra is None:
            return F.embedding(tokens, weight)
        main = weight.shape[0]
        extra = tokens >= main
        out = F.embedding(tokens.clamp(max=main - 1), weight)
        picked = F.embedding((tokens - main).clamp(min=0), self.extra.to(out.dtype))
        return torch.where(extra.unsqueeze(-1), picked, out)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.lookup(tokens)
