"""Evaluation by the protocol that fits the model (DESIGN.md §4), comparable with published numbers.

Recurrent models: each split is one token stream, validation read in 10 columns and test in 1, the
state carried across windows, every token except the first predicted exactly once. Transformers:
a sliding window of `data.block_size` tokens moved by `data.eval_stride`, every token except the
first scored exactly once with the longest context the grid gives it. Both report token-level and
word-level perplexity.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable

import torch

from lmdisc.analysis.frequency import FrequencyBuckets
from lmdisc.data.window import Window
from lmdisc.losses.base import at_least_fp32, gather_nll
from lmdisc.window_loop import Reader, read_windows

SPLIT_NAMES = {"valid": "val", "test": "test"}


@torch.inference_mode()
def evaluate_windows(
    model: torch.nn.Module,
    windows: Iterable[Window],
    device: torch.device | str = "cpu",
    carry_state: bool | None = None,
    observers: Iterable[Callable[[Window, torch.Tensor, torch.Tensor], None]] = (),
    progress: Callable[[str], None] | None = None,
    progress_every_s: float = 60.0,
) -> dict[str, float]:
    """Token-weighted loss, perplexity and word-level perplexity of `model` over a split's windows.

    Each observer is called with (window, per-token NLL, log-probs) of every window, e.g. to bucket tokens.
    """
    observers = list(observers)
    was_training = model.training
    model.eval()
    carry = getattr(model, "carries_state", True) if carry_state is None else carry_state
    reader = Reader(model, carry)
    nll_sum = torch.zeros((), dtype=torch.float64, device=device)
    words = torch.zeros((), dtype=torch.float64, device=device)
    tokens = 0
    start = time.perf_counter()
    try:
        for window in read_windows(windows, device, progress, progress_every_s):
            logits, _ = reader(window.inputs)
            log_probs = torch.log_softmax(at_least_fp32(logits), dim=-1)
            nll = gather_nll(log_probs, window.targets)
            nll_sum += nll.double().sum()
            words += window.words.double().sum()
            tokens += int(window.scored.sum())
            for observe in observers:
                observe(window, nll, log_probs)
    finally:
        model.train(was_training)
    loss = float(nll_sum) / max(tokens, 1)
    word_loss = float(nll_sum) / max(float(words), 1e-12)
    seconds = time.perf_counter() - start
    return {
        "loss": loss,
        "ppl": math.exp(loss),
        "word_ppl": math.exp(word_loss),
        "tokens": tokens,
        "words": float(words),
        "seconds": seconds,
        "tokens_per_s": tokens / seconds if seconds > 0 else float("nan"),
    }


def _print_line(line: str) -> None:
    print(line, flush=True)


def evaluate_splits(
    model: torch.nn.Module,
    datamodule,
    device: torch.device | str = "cpu",
    buckets: bool = True,
    progress: Callable[[str], None] | None = _print_line,
    splits: Iterable[str] = ("valid", "test"),
) -> dict[str, dict]:
    """Validation and test results of `model` on `datamodule`'s corpus, by its window protocol
    (`datamodule.bind_model(model)` chooses it when none is chosen yet).

    With `buckets`, each split's result also has "buckets": its frequency-bucket rows (per word).
    Progress lines (`read_windows`) are printed unless `progress` is None.
    """
    corpus = datamodule.load()
    if datamodule.protocol is None:
        datamodule.bind_model(model)
    carry = datamodule.protocol.carries_state
    results = {}
    for split in splits:
        bucketer = FrequencyBuckets(corpus["train"], corpus[split]) if buckets else None
        observers = [bucketer.update] if bucketer else []
        say = (lambda line, split=split: progress(f"evaluating {split}: {line}")) if progress else None
        loader = datamodule.split_loader(split)
        results[split] = evaluate_windows(model, loader, device, carry, observers, progress=say)
        if bucketer:
            results[split]["buckets"] = bucketer.rows()
    return results


def flatten_results(results: dict[str, dict]) -> dict:
    """{"valid": {"ppl": ..}, "test": {..}} -> {"val/ppl": .., "test/ppl": .., "buckets": {"val": rows}}."""
    flat: dict = {
        f"{SPLIT_NAMES[s]}/{k}": v for s, row in results.items() for k, v in row.items() if k != "buckets"
    }
    buckets = {SPLIT_NAMES[s]: row["buckets"] for s, row in results.items() if "buckets" in row}
    if buckets:
        flat["buckets"] = buckets
    return flat
