"""Paired bootstrap over test lines: how much of a difference between two arms is the luck of which
lines the test split holds.

Each scored run leaves per-line numbers (eval.py score_file's `<stem>.lines.jsonl`: words and mean
surprisal per line). Two arms are paired line by line and seed by seed (arm A's seed s against
arm B's seed s, on the same lines). The statistic is the seed-averaged difference in word-level
NLL (nats per word, = log of the perplexity ratio), and beside it the difference in word-level
perplexity. Each resample draws the lines once (with replacement) and uses the same draw for
every seed: the interval is over the test lines only; the spread over seeds is reported apart.

Written here rather than with scipy.stats.bootstrap: that resamples each array on its own or
pairs whole samples, while this statistic is a ratio of sums over shared lines across several
seed pairs at once, which one matrix product of resample counts computes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from lmdisc.errors import LmdiscError

LN2 = math.log(2)


def read_lines_file(path: str | Path) -> dict[int, tuple[float, float]]:
    """{line: (NLL in nats, words)} from a `<stem>.lines.jsonl`."""
    rows = {}
    with open(path, encoding="utf-8") as handle:
        for text in handle:
            if text.strip():
                row = json.loads(text)
                rows[int(row["line"])] = (
                    row["mean_surprisal_bits"] * row["words"] * LN2,
                    float(row["words"]),
                )
    if not rows:
        raise LmdiscError(f"{path} holds no scored lines")
    return rows


def paired_arrays(pairs: list[tuple[str | Path, str | Path]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(A's NLL [seeds, lines], B's NLL [seeds, lines], words [lines]) from (A file, B file) per
    seed; every file must score the same lines with the same word counts (the same text)."""
    a_rows, b_rows = [], []
    reference = None
    for a_file, b_file in pairs:
        for path, into in ((a_file, a_rows), (b_file, b_rows)):
            rows = read_lines_file(path)
            if reference is None:
                reference = rows
            if rows.keys() != reference.keys() or any(rows[k][1] != reference[k][1] for k in rows):
                raise LmdiscError(
                    f"{path} does not score the same lines as {pairs[0][0]}: a paired bootstrap needs one text"
                )
            into.append([rows[k][0] for k in sorted(rows)])
    words = np.array([reference[k][1] for k in sorted(reference)])
    return np.array(a_rows), np.array(b_rows), words


def paired_bootstrap(
    a: np.ndarray,
    b: np.ndarray,
    words: np.ndarray,
    resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
    chunk: int = 250,
) -> dict:
    """A − B (arrays [seeds, lines] of per-line NLL, nats; `words` [lines]): the seed-averaged
    difference in NLL per word and in word-level perplexity, each with a percentile interval."""
    a, b, words = np.atleast_2d(a).astype(float), np.atleast_2d(b).astype(float), np.asarray(words, float)
    if a.shape != b.shape or a.shape[1] != words.shape[0]:
        raise LmdiscError(f"paired arrays differ in shape: {a.shape}, {b.shape}, words {words.shape}")

    def stats(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        total = counts @ words  # [R]
        nll_a, nll_b = (counts @ a.T) / total[:, None], (counts @ b.T) / total[:, None]  # [R, seeds]
        return (nll_a - nll_b).mean(1), (np.exp(nll_a) - np.exp(nll_b)).mean(1)

    point_nll, point_ppl = stats(np.ones((1, words.shape[0])))
    rng = np.random.default_rng(seed)
    lines = words.shape[0]
    nll, ppl = [], []
    for start in range(0, resamples, chunk):
        counts = rng.multinomial(lines, np.full(lines, 1.0 / lines), size=min(chunk, resamples - start))
        d_nll, d_ppl = stats(counts.astype(float))
        nll.append(d_nll)
        ppl.append(d_ppl)
    tails = [100 * (1 - level) / 2, 100 * (1 + level) / 2]
    nll_low, nll_high = np.percentile(np.concatenate(nll), tails)
    ppl_low, ppl_high = np.percentile(np.concatenate(ppl), tails)
    return {
        "delta_nll_per_word": float(point_nll[0]),
        "nll_interval": [float(nll_low), float(nll_high)],
        "delta_word_ppl": float(point_ppl[0]),
        "ppl_interval": [float(ppl_low), float(ppl_high)],
        "seeds": a.shape[0],
        "lines": lines,
        "resamples": resamples,
        "level": level,
    }
