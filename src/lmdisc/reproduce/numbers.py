"""How the reports write numbers: means ± sample std (n-1) over seeds, never a spread of one run."""

from __future__ import annotations

import math
import statistics

# the zero head's validation BCE (s = 0 on every word, positives and negatives alike): 2 ln 2
ZERO_HEAD_BCE = 2 * math.log(2)


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def pm(values: list[float], digits: int = 2) -> str:
    """mean ± sample std; a single run has no spread to show (not "± 0.00")."""
    mean, std = mean_std(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def tokens_per_s(runs: list[dict]) -> str:
    """Over the runs that trained in their last process (a run resumed after its last epoch did not)."""
    measured = [r["train_tokens_per_s"] for r in runs if r.get("train_tokens_per_s")]
    return pm(measured, 0) if measured else "–"


def peak_memory(runs: list[dict]) -> str:
    """The stage processes' peak resident memory (host RAM, resources.json), GiB."""
    peaks = [
        r["resources"]["peak_rss_bytes"] / 2**30
        for r in runs
        if (r.get("resources") or {}).get("peak_rss_bytes")
    ]
    return pm(peaks, 2) if len(peaks) == len(runs) and peaks else "–"


def word_ppl(runs: list[dict], split: str = "test") -> str:
    """Word-level PPL (the same as token-level for a word tokenizer; '–' for runs from before it was
    recorded)."""
    values = [r[f"{split}/word_ppl"] for r in runs if f"{split}/word_ppl" in r]
    return pm(values) if len(values) == len(runs) and values else "–"
