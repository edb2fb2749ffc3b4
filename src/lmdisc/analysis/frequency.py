"""Frequency-bucket analysis: how well the model predicts rare vs frequent words.

Evaluation words are grouped by how often the word occurs in the training split, in log-spaced
buckets (1-9, 10-99, 100-999, ... occurrences; words never seen in training join the first). A
word's log-probability is the sum over its tokens, so subword models are bucketed by word, like
word-level ones. Per bucket: share of the evaluation words, mean log-probability per word, and the
bucket's perplexity exp(-mean log-prob).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from lmdisc.analysis.plotting import headless_pyplot, save_figure
from lmdisc.data.corpus import TokenizedSplit
from lmdisc.data.window import Window


def log_spaced_edges(max_count: int, base: int = 10) -> list[int]:
    """[1, 10, 100, ...] up to the first power above `max_count`: bucket i is [edges[i], edges[i+1])."""
    edges = [1]
    while edges[-1] <= max_count:
        edges.append(edges[-1] * base)
    return edges


class CountBuckets:
    """Log-spaced buckets of training counts up to `max_count`."""

    def __init__(self, max_count: int, base: int = 10):
        self.edges = log_spaced_edges(int(max_count), base)
        self.boundaries = torch.tensor(self.edges[1:-1])
        self.names = [f"{self.edges[i]}-{self.edges[i + 1] - 1}" for i in range(len(self.edges) - 1)]

    def of(self, counts: torch.Tensor) -> torch.Tensor:
        return torch.bucketize(counts, self.boundaries, right=True)


def token_classes(train_ids: torch.Tensor, vocab_size: int, base: int = 10) -> tuple[torch.Tensor, list[str]]:
    """Each predicted id's bucket by its count in the training split, and the bucket names (the
    frequency-class discriminator and the mass moved per bucket work per id, not per word)."""
    counts = torch.bincount(train_ids, minlength=vocab_size)[:vocab_size]
    buckets = CountBuckets(int(counts.max()), base)
    return buckets.of(counts), buckets.names


class FrequencyBuckets:
    """Accumulates per-bucket log-probabilities (fp64) of the words of one evaluated split."""

    def __init__(self, train: TokenizedSplit, evaluated: TokenizedSplit | None = None, base: int = 10):
        self.buckets = CountBuckets(int(train.word_count.max()), base)
        self.edges = self.buckets.edges
        self.word_count = evaluated.word_count if evaluated is not None else None
        n = len(self.edges) - 1
        self.logprob_sum = torch.zeros(n, dtype=torch.float64)
        self.words = torch.zeros(n, dtype=torch.float64)
        self.tokens = torch.zeros(n, dtype=torch.long)

    def add(self, counts: torch.Tensor, nll: torch.Tensor, words: torch.Tensor) -> None:
        """Tokens (or words) whose word was seen `counts` times in training, their NLL and the words they end."""
        buckets = self.buckets.of(counts.cpu())
        self.logprob_sum.index_add_(0, buckets, -nll.detach().double().cpu())
        self.words.index_add_(0, buckets, words.detach().double().cpu())
        self.tokens.index_add_(0, buckets, torch.ones_like(buckets))

    def update(self, window: Window, nll: torch.Tensor, log_probs: torch.Tensor | None = None) -> None:
        scored = window.scored
        positions = window.positions[scored].cpu()
        self.add(self.word_count[positions], nll[scored], window.words[scored])

    def rows(self) -> list[dict]:
        total = max(float(self.words.sum()), 1e-12)
        rows = []
        for i, name in enumerate(self.buckets.names):
            words = float(self.words[i])
            mean = float(self.logprob_sum[i]) / words if words else float("nan")
            rows.append(
                {
                    "bucket": name,
                    "train_count_min": self.edges[i],
                    "train_count_max": self.edges[i + 1] - 1,
                    "tokens": int(self.tokens[i]),
                    "words": words,
                    "share": words / total,
                    "mean_logprob": mean,
                    "ppl": math.exp(-mean) if words else float("nan"),
                }
            )
        return rows


def plot_buckets(curves: dict[str, list[dict]], path: Path, title: str) -> Path:
    """Bucket perplexity (log scale) and word share, one line per labelled result; written atomically."""
    plt = headless_pyplot()
    fig, (ax_ppl, ax_share) = plt.subplots(1, 2, figsize=(11, 4))
    for label, rows in curves.items():
        names = [r["bucket"] for r in rows]
        ax_ppl.plot(names, [r["ppl"] for r in rows], marker="o", label=label)
        ax_share.bar(names, [r["share"] for r in rows], alpha=0.5, label=label)
    ax_ppl.set_yscale("log")
    ax_ppl.set_xlabel("training-set count of the word")
    ax_ppl.set_ylabel("bucket perplexity (per word)")
    ax_share.set_xlabel("training-set count of the word")
    ax_share.set_ylabel("share of evaluation words")
    for ax in (ax_ppl, ax_share):
        ax.tick_params(axis="x", labelrotation=30)
    fig.suptitle(title)
    return save_figure(fig, [ax_ppl, ax_share], path)
