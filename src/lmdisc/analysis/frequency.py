"""Frequency-bucket analysis: how well the model predicts rare vs frequent words.

Evaluation tokens are grouped by how often the word occurs in the training split, in
log-spaced buckets (1-9, 10-99, 100-999, ... occurrences; words never seen in training join the
first). Per bucket: share of the evaluation tokens, mean log-probability, and the bucket's
perplexity exp(-mean log-prob).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from lmdisc.analysis.plotting import headless_pyplot, save_figure
from lmdisc.data.batching import IGNORE_INDEX


def log_spaced_edges(max_count: int, base: int = 10) -> list[int]:
    """[1, 10, 100, ...] up to the first power above `max_count`: bucket i is [edges[i], edges[i+1])."""
    edges = [1]
    while edges[-1] <= max_count:
        edges.append(edges[-1] * base)
    return edges


class FrequencyBuckets:
    """Accumulates per-bucket log-probabilities of target tokens (fp64)."""

    def __init__(self, train_stream: torch.Tensor, vocab_size: int, base: int = 10):
        counts = torch.bincount(train_stream, minlength=vocab_size)
        self.edges = log_spaced_edges(int(counts.max()), base)
        boundaries = torch.tensor(self.edges[1:-1])
        self.bucket_of_word = torch.bucketize(counts, boundaries, right=True)
        n = len(self.edges) - 1
        self.logprob_sum = torch.zeros(n, dtype=torch.float64)
        self.tokens = torch.zeros(n, dtype=torch.long)

    def update(self, targets: torch.Tensor, nll: torch.Tensor) -> None:
        mask = targets != IGNORE_INDEX
        buckets = self.bucket_of_word[targets[mask].cpu()]
        self.logprob_sum.index_add_(0, buckets, -nll[mask].detach().double().cpu())
        self.tokens.index_add_(0, buckets, torch.ones_like(buckets))

    def rows(self) -> list[dict]:
        total = max(int(self.tokens.sum()), 1)
        rows = []
        for i in range(len(self.edges) - 1):
            n = int(self.tokens[i])
            mean = float(self.logprob_sum[i]) / n if n else float("nan")
            rows.append(
                {
                    "bucket": f"{self.edges[i]}-{self.edges[i + 1] - 1}",
                    "train_count_min": self.edges[i],
                    "train_count_max": self.edges[i + 1] - 1,
                    "tokens": n,
                    "share": n / total,
                    "mean_logprob": mean,
                    "ppl": math.exp(-mean) if n else float("nan"),
                }
            )
        return rows


def plot_buckets(curves: dict[str, list[dict]], path: Path, title: str) -> Path:
    """Bucket perplexity (log scale) and token share, one line per labelled result; written atomically."""
    plt = headless_pyplot()
    fig, (ax_ppl, ax_share) = plt.subplots(1, 2, figsize=(11, 4))
    for label, rows in curves.items():
        names = [r["bucket"] for r in rows]
        ax_ppl.plot(names, [r["ppl"] for r in rows], marker="o", label=label)
        ax_share.bar(names, [r["share"] for r in rows], alpha=0.5, label=label)
    ax_ppl.set_yscale("log")
    ax_ppl.set_xlabel("training-set count of the word")
    ax_ppl.set_ylabel("bucket perplexity")
    ax_share.set_xlabel("training-set count of the word")
    ax_share.set_ylabel("share of evaluation tokens")
    fig.suptitle(title)
    return save_figure(fig, [ax_ppl, ax_share], path)
