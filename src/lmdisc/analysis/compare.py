"""Before/after comparison of two checkpoints of one corpus: which words did fine-tuning help or hurt?

Both models score every token of a split once, by the standard protocol (the same stream layout,
state carrying and per-token NLL as eval.py, via `evaluate_stream`), so the per-token log-probs
add up to the perplexities eval.py reports. Tokens are then grouped by the training-set frequency
of the target word (`FrequencyBuckets`, as in training's bucket table) or by word type.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.utils import instantiate

from lmdisc.analysis.frequency import FrequencyBuckets
from lmdisc.checkpoint import (
    build_model,
    check_same_vocab,
    checkpoint_vocab,
    load_checkpoint,
    vocab_difference,
)
from lmdisc.data.batching import IGNORE_INDEX
from lmdisc.errors import LmdiscError
from lmdisc.evaluation import STANDARD_BATCH_SIZES, evaluate_stream


@dataclass
class Comparison:
    """Per-token log-probs (nats, fp64) of the split's targets, in stream order, under both models."""

    split: str
    words: list[str]  # the shared vocabulary: id -> word
    targets: torch.Tensor  # [N] word ids
    before: torch.Tensor  # [N] log p_before(target)
    after: torch.Tensor  # [N] log p_after(target)
    train_counts: torch.Tensor  # [V] occurrences of each word in the training split
    train_stream: torch.Tensor  # the training split's ids (the bucket edges come from it)

    @property
    def tokens(self) -> int:
        return self.targets.numel()

    def ppl(self, which: str) -> float:
        return math.exp(-float(getattr(self, which).mean()))


def _score(model: torch.nn.Module, datamodule, split: str, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(targets, log-probs) of every token of `split`, in stream order."""
    windows: list[tuple[torch.Tensor, torch.Tensor]] = []
    loader = datamodule.split_loader(split, STANDARD_BATCH_SIZES[split])
    evaluate_stream(model, loader, device, [lambda t, nll: windows.append((t.cpu(), nll.cpu()))])
    # windows are [columns, steps]; each column is a contiguous piece of the stream
    targets = torch.cat([t for t, _ in windows], dim=1).reshape(-1)
    nll = torch.cat([n for _, n in windows], dim=1).reshape(-1)
    keep = targets != IGNORE_INDEX
    return targets[keep], -nll[keep].double()


def compare_checkpoints(
    before: str | Path,
    after: str | Path,
    split: str = "test",
    data_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
) -> Comparison:
    """Score `split` under both checkpoints.

    The corpus is the one BEFORE was trained on (its recorded data config), or the folder
    `data_dir` (train/valid/test.txt) when given, e.g. when the run's corpus has moved. Both
    checkpoints must share the corpus' vocabulary: otherwise the same id means different words.
    """
    if split not in STANDARD_BATCH_SIZES:
        raise LmdiscError(f"split must be one of {sorted(STANDARD_BATCH_SIZES)}, got {split!r}")
    ckpt_before, ckpt_after = load_checkpoint(before), load_checkpoint(after)
    vocab = checkpoint_vocab(ckpt_before)
    detail = vocab_difference(vocab, checkpoint_vocab(ckpt_after), "before", "after")
    if detail:
        raise LmdiscError(
            f"{before} and {after} have different vocabularies ({detail}); only checkpoints trained "
            "on the same corpus can be compared word by word"
        )
    data_cfg = dict(ckpt_before["lmdisc"].get("config", {}).get("data") or {})
    if data_dir is not None:
        data_cfg = {**data_cfg, "_target_": "lmdisc.data.LMDataModule", "path": str(data_dir)}
        data_cfg.update(source=None, download=False)
    elif not data_cfg:
        raise LmdiscError(f"{before} records no data config; pass data_dir=<corpus folder>")
    datamodule = instantiate(data_cfg)
    check_same_vocab(vocab, datamodule.vocab.words, what=f"checkpoint {before}")
    scored = []
    for ckpt in (ckpt_before, ckpt_after):
        scored.append(_score(build_model(ckpt).to(device), datamodule, split, device))
    (targets, logp_before), (_, logp_after) = scored
    train_stream = datamodule.load()["train"]
    return Comparison(
        split=split,
        words=vocab,
        targets=targets,
        before=logp_before,
        after=logp_after,
        train_counts=torch.bincount(train_stream, minlength=len(vocab)),
        train_stream=train_stream,
    )


def bucket_table(cmp: Comparison) -> list[dict]:
    """Per training-frequency bucket: token share, mean log-prob before/after, change, perplexities.

    The buckets are training's (`FrequencyBuckets`), so the "before" columns match the bucket
    table that train.py / eval.py printed for the BEFORE checkpoint.
    """
    rows = {}
    for which in ("before", "after"):
        bucketer = FrequencyBuckets(cmp.train_stream, len(cmp.words))
        bucketer.update(cmp.targets, -getattr(cmp, which))
        rows[which] = bucketer.rows()
    table = []
    for b, a in zip(rows["before"], rows["after"]):
        table.append(
            {
                "bucket": b["bucket"],
                "tokens": b["tokens"],
                "share": b["share"],
                "logprob_before": b["mean_logprob"],
                "logprob_after": a["mean_logprob"],
                "change": a["mean_logprob"] - b["mean_logprob"],
                "ppl_before": b["ppl"],
                "ppl_after": a["ppl"],
            }
        )
    return table


def word_table(
    cmp: Comparison, min_count: int = 5, top: int | None = None, order: str = "gain"
) -> list[dict]:
    """Mean log-prob change per word type, over its occurrences in the split.

    Only words occurring at least `min_count` times: a single token's change is mostly noise.
    order="gain": largest increase first; "loss": largest decrease first.
    """
    if order not in ("gain", "loss"):
        raise LmdiscError(f"order must be gain or loss, got {order!r}")
    size = len(cmp.words)
    count = torch.bincount(cmp.targets, minlength=size)
    sums = {
        which: torch.zeros(size, dtype=torch.float64).index_add_(0, cmp.targets, getattr(cmp, which))
        for which in ("before", "after")
    }
    ids = (count >= max(min_count, 1)).nonzero().flatten().tolist()
    rows = [
        {
            "word": cmp.words[i],
            "train_count": int(cmp.train_counts[i]),
            "occurrences": int(count[i]),
            "logprob_before": float(sums["before"][i]) / int(count[i]),
            "logprob_after": float(sums["after"][i]) / int(count[i]),
        }
        for i in ids
    ]
    for row in rows:
        row["change"] = row["logprob_after"] - row["logprob_before"]
    rows.sort(key=lambda r: (-r["change"] if order == "gain" else r["change"], r["word"]))
    return rows[:top] if top is not None else rows


def format_table(rows: list[dict], digits: int = 3) -> str:
    """Rows of dicts as a fixed-width text table (no pandas needed)."""
    if not rows:
        return "(no rows)"
    columns = list(rows[0])

    def cell(value) -> str:
        return f"{value:.{digits}f}" if isinstance(value, float) else str(value)

    cells = [[cell(r[c]) for c in columns] for r in rows]
    widths = [max(len(c), *(len(r[j]) for r in cells)) for j, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def plot_bucket_table(table: list[dict], title: str = ""):
    """Bucket perplexity before/after (log scale) and the log-prob change per bucket; returns the figure.

    Uses the current matplotlib backend (inline in a notebook), unlike `plot_buckets`, which
    writes a file.
    """
    import matplotlib.pyplot as plt

    names = [r["bucket"] for r in table]
    fig, (ax_ppl, ax_change) = plt.subplots(1, 2, figsize=(11, 4))
    for which in ("before", "after"):
        ax_ppl.plot(names, [r[f"ppl_{which}"] for r in table], marker="o", label=which)
    ax_ppl.set_yscale("log")
    ax_ppl.set_ylabel("bucket perplexity")
    ax_ppl.legend()
    changes = [r["change"] for r in table]
    ax_change.bar(names, changes, color=["tab:green" if c >= 0 else "tab:red" for c in changes])
    ax_change.axhline(0, color="black", lw=0.8)
    ax_change.set_ylabel("mean log-prob change (nats, after - before)")
    for ax in (ax_ppl, ax_change):
        ax.set_xlabel("training-set count of the word")
        ax.tick_params(axis="x", labelrotation=30)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
