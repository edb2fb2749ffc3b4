"""Token-weighted NLL / perplexity: sums over the whole split in fp64, reduced across DDP ranks."""

from __future__ import annotations

import torch

from lmdisc.data.window import IGNORE_INDEX

from .exact_states import ExactStateMetric


class TokenNLL(ExactStateMetric):
    """exp(sum NLL / number of tokens) over everything seen; never a mean of batch perplexities.

    It also sums the words the scored tokens end (`Window.words`), so exp(sum NLL / words) is the
    word-level perplexity that compares across tokenizers.
    """

    full_state_update = False
    higher_is_better = False

    def __init__(self, ignore_index: int = IGNORE_INDEX, **kwargs):
        super().__init__(**kwargs)
        self.ignore_index = ignore_index
        self.add_state("nll_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("tokens", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("words", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(
        self, token_nll: torch.Tensor, targets: torch.Tensor, words: torch.Tensor | None = None
    ) -> None:
        """`token_nll`: per-token NLL [B, T], zero at ignored targets; `words`: the words each target
        ends (default: one per scored token, as for a word tokenizer)."""
        scored = targets != self.ignore_index
        self.nll_sum += token_nll.detach().double().sum()
        self.tokens += scored.sum()
        self.words += (scored if words is None else words.detach()).double().sum()

    def compute(self) -> torch.Tensor:
        """Mean NLL per token in nats (perplexity is its exp)."""
        return self.nll_sum / self.tokens.clamp_min(1)

    def word_loss(self) -> torch.Tensor:
        """Mean NLL per word in nats (word-level perplexity is its exp)."""
        return self.nll_sum / self.words.clamp_min(1e-12)
