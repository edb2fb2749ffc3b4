"""AWD-LSTM's dropout family, each a few lines (Merity et al. 2017; Gal & Ghahramani 2016)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call


class LockedDropout(nn.Module):
    """Variational dropout: one mask per sequence, shared over time ([B, T, H], batch first)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor, p: float | None = None) -> torch.Tensor:
        p = self.p if p is None else p
        if not self.training or p == 0:
            return x
        mask = x.new_empty(x.shape[0], 1, x.shape[2]).bernoulli_(1 - p) / (1 - p)
        return x * mask


def embedding_dropout(embedding: nn.Embedding, tokens: torch.Tensor, p: float) -> torch.Tensor:
    """Drop whole word types: every occurrence of a dropped word gets a zero vector (a
    `TokenEmbedding`'s input-only rows are never dropped)."""
    weight = embedding.weight
    if p > 0:
        mask = weight.new_empty(weight.shape[0], 1).bernoulli_(1 - p) / (1 - p)
        weight = weight * mask
    if hasattr(embedding, "lookup"):
        return embedding.lookup(tokens, weight)
    return F.embedding(tokens, weight, embedding.padding_idx)


class WeightDrop(nn.Module):
    """DropConnect on named weights of a wrapped module (AWD's hidden-to-hidden weight drop).

    The Parameters stay where they are; in training a dropped copy is passed to the module
    through `torch.func.functional_call`, so eval is deterministic and the optimiser, state
    dicts and DDP see ordinary parameters.
    """

    def __init__(self, module: nn.Module, weight_names: list[str], p: float):
        super().__init__()
        self.module = module
        self.weight_names = list(weight_names)
        self.p = p

    def forward(self, *args):
        if not self.training or self.p == 0:
            return self.module(*args)
        dropped = {
            name: F.dropout(getattr(self.module, name), self.p, training=True) for name in self.weight_names
        }
        return functional_call(self.module, dropped, args)
