"""A synthetic source with known p: a random first-order Markov chain over a small vocabulary.

Real corpora never tell us p, so nothing checks that the discriminator's s = log p − log q_0 or
the reverse-KL term is right. Here p(w | c) = P[previous word, w] is known exactly, so for any
bigram q_0 or q_θ the exact KL is a table look-up (`exact_kl_rows`) that the discriminator's
estimate can be compared with (tests/unit/test_reverse_kl.py, benchmarks/negatives.py).
"""

from __future__ import annotations

from bisect import bisect_right

import torch


def markov_chain(vocab_size: int, seed: int, sharpness: float = 2.0) -> torch.Tensor:
    """Transition matrix P[V, V] (rows sum to 1): softmax of Gaussian logits × `sharpness`."""
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(vocab_size, vocab_size, generator=g) * sharpness, -1)


def sample_chain(P: torch.Tensor, n: int, seed: int, start: int = 0) -> torch.Tensor:
    """n tokens of the chain P, starting at word `start` (inverse-CDF sampling of each step)."""
    g = torch.Generator().manual_seed(seed)
    cumulative = P.double().cumsum(-1).tolist()
    uniforms = torch.rand(n, generator=g, dtype=torch.float64).tolist()
    last = P.shape[-1] - 1
    out = [start] * n
    word = start
    for i in range(1, n):
        # min(): a row's cumulative sum can end a rounding error below 1
        word = min(bisect_right(cumulative[word], uniforms[i]), last)
        out[i] = word
    return torch.tensor(out, dtype=torch.long)


def exact_kl_rows(a_log: torch.Tensor, b_log: torch.Tensor) -> torch.Tensor:
    """KL(a‖b) along the last dimension, from log-probabilities."""
    return (a_log.exp() * (a_log - b_log)).sum(-1)
