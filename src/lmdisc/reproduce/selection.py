"""Each arm's best learning rate by validation: the pipeline scores those runs on the full test
split, and the report compares the arms there. Test numbers never choose anything."""

from __future__ import annotations

import statistics
from collections import defaultdict


def best_by_validation(runs: list[dict]) -> dict[str, dict]:
    """Per arm: the learning rate with the lowest mean validation PPL over seeds (ties: the smaller
    rate), its runs, and every rate's runs (`grid`)."""
    grouped: dict[str, dict[float, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        grouped[run["arm"]][run["lr"]].append(run)
    best = {}
    for arm, by_lr in grouped.items():
        lr = min(sorted(by_lr), key=lambda x: statistics.fmean(r["val/ppl"] for r in by_lr[x]))
        best[arm] = {"lr": lr, "runs": by_lr[lr], "grid": dict(by_lr)}
    return best
