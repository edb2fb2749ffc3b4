"""The standard evaluation protocol (DESIGN.md §4): comparable with published PTB/WikiText-2 numbers.

Each split is one token stream; validation is read in 10 columns, test in 1; the recurrent
state is carried across windows, and every token except the first is predicted exactly once.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable

import torch

from lmdisc.analysis.frequency import FrequencyBuckets
from lmdisc.data.batching import IGNORE_INDEX
from lmdisc.losses.base import token_nll

STANDARD_BATCH_SIZES = {"valid": 10, "test": 1}


@torch.inference_mode()
def evaluate_stream(
    model: torch.nn.Module,
    windows: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device | str = "cpu",
    observers: Iterable[Callable[[torch.Tensor, torch.Tensor], None]] = (),
    progress: Callable[[str], None] | None = None,
    progress_every_s: float = 60.0,
) -> dict[str, float]:
    """Token-weighted loss and perplexity of `model` over a stream's windows, state carried.

    Each observer is called with (targets, per-token NLL) of every window, e.g. to bucket tokens.
    With `progress`, a line goes to it every `progress_every_s` seconds: a test split read in one
    column takes minutes on a large vocabulary, and a log should not look hung meanwhile.
    """
    observers = list(observers)
    was_training = model.training
    model.eval()
    nll_sum = torch.zeros((), dtype=torch.float64, device=device)
    tokens = 0
    state = None
    start = last_line = time.perf_counter()
    total = len(windows) if hasattr(windows, "__len__") else None
    try:
        for index, (inputs, targets) in enumerate(windows, 1):
            inputs, targets = inputs.to(device), targets.to(device)
            logits, state, _ = model(inputs, state)
            nll = token_nll(logits, targets)
            nll_sum += nll.double().sum()
            for observe in observers:
                observe(targets, nll)
            tokens += int((targets != IGNORE_INDEX).sum())
            now = time.perf_counter()
            if progress is not None and now - last_line >= progress_every_s:
                last_line = now
                progress(_progress_line(index, total, tokens, now - start))
    finally:
        model.train(was_training)
    loss = float(nll_sum) / max(tokens, 1)
    seconds = time.perf_counter() - start
    return {
        "loss": loss,
        "ppl": math.exp(loss),
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds if seconds > 0 else float("nan"),
    }


def _print_line(line: str) -> None:
    print(line, flush=True)


def _progress_line(done: int, total: int | None, tokens: int, seconds: float) -> str:
    rate = tokens / max(seconds, 1e-9)
    if not total:
        return f"window {done:,} · {rate:,.0f} tok/s"
    left = seconds / done * (total - done)
    return f"window {done:,}/{total:,} ({100 * done / total:.0f}%) · {rate:,.0f} tok/s · ~{left:.0f} s left"


def standard_protocol(
    model: torch.nn.Module,
    datamodule,
    device: torch.device | str = "cpu",
    buckets: bool = True,
    progress: Callable[[str], None] | None = _print_line,
) -> dict[str, dict]:
    """Validation (batch 10) and test (batch 1) results of `model` on `datamodule`'s corpus.

    With `buckets`, each split's result also has "buckets": its frequency-bucket rows. Progress
    lines (`evaluate_stream`) are printed unless `progress` is None.
    """
    corpus = datamodule.load()
    results = {}
    for split, batch_size in STANDARD_BATCH_SIZES.items():
        bucketer = FrequencyBuckets(corpus["train"], len(corpus.vocab)) if buckets else None
        observers = [bucketer.update] if bucketer else []
        say = (
            (lambda line, split=split: progress(f"evaluating {split}: {line}", flush=True))
            if progress
            else None
        )
        loader = datamodule.split_loader(split, batch_size)
        results[split] = evaluate_stream(model, loader, device, observers, progress=say)
        if bucketer:
            results[split]["buckets"] = bucketer.rows()
    return results


def flatten_results(results: dict[str, dict]) -> dict:
    """{"valid": {"ppl": ..}, "test": {..}} -> {"val/ppl": .., "test/ppl": .., "buckets": {"val": rows}}."""
    names = {"valid": "val", "test": "test"}
    flat: dict = {
        f"{names[s]}/{k}": v for s, row in results.items() for k, v in row.items() if k != "buckets"
    }
    buckets = {names[s]: row["buckets"] for s, row in results.items() if "buckets" in row}
    if buckets:
        flat["buckets"] = buckets
    return flat
