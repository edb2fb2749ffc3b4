"""Before/after comparison of two checkpoints of one corpus: which words did fine-tuning help or hurt?

Both models score every token of a split once, by the protocol eval.py uses (the same windows,
state carrying and per-token NLL, via `evaluate_windows`), so the log-probs add up to the
perplexities eval.py reports. A word's log-prob is the sum over its tokens (for a word tokenizer,
a word is a token). Words are then grouped by their training-set frequency (`FrequencyBuckets`,
as in training's bucket table) or by word type.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from lmdisc.analysis.frequency import FrequencyBuckets
from lmdisc.checkpoint import build_model, checkpoint_tokenizer, datamodule_for_checkpoint, load_checkpoint
from lmdisc.data.corpus import TokenizedSplit
from lmdisc.data.tokenizers import same_tokenizer_or_refuse
from lmdisc.errors import LmdiscError
from lmdisc.evaluation import evaluate_windows

SPLITS = ("valid", "test")


@dataclass
class Comparison:
    """Per-word log-probs (nats, fp64) of a split's scored words, in text order, under both models."""

    split: str
    words: list[str]  # [W] each scored word's text
    train_counts: torch.Tensor  # [W] occurrences of the word in the training split
    before: torch.Tensor  # [W] log p_before(word)
    after: torch.Tensor  # [W] log p_after(word)
    train: TokenizedSplit  # the training split (the bucket edges come from it)

    @property
    def words_scored(self) -> int:
        return len(self.words)

    def ppl(self, which: str) -> float:
        return math.exp(-float(getattr(self, which).mean()))


def _token_nll(model: torch.nn.Module, datamodule, split: str, device) -> torch.Tensor:
    """NLL of every position of `split` (NaN where a position is not scored: the first token)."""
    size = len(datamodule.load()[split])
    nll = torch.full((size,), float("nan"), dtype=torch.float64)

    def observe(window, token_nll, _log_probs) -> None:
        scored = window.scored
        nll[window.positions[scored].cpu()] = token_nll[scored].double().cpu()

    datamodule.bind_model(model)  # each model reads by its own protocol (an LSTM and a GPT may share words)
    loader = datamodule.split_loader(split)
    evaluate_windows(model, loader, device, datamodule.protocol.carries_state, [observe])
    return nll


def _per_word(split: TokenizedSplit, nll: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(first token, log-prob) of every word whose tokens were all scored."""
    ends = (split.word_weight > 0).long()
    word = torch.cumsum(ends, 0) - ends
    total = torch.zeros(int(word[-1]) + 1, dtype=torch.float64).index_add_(0, word, nll)
    first = torch.full_like(total, -1, dtype=torch.long).scatter_reduce_(
        0, word, torch.arange(len(word)), "amin", include_self=False
    )
    keep = ~torch.isnan(total)
    return first[keep], -total[keep]


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
    checkpoints must share a tokenizer: otherwise the same id means different text.
    """
    if split not in SPLITS:
        raise LmdiscError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    ckpt_before, ckpt_after = load_checkpoint(before), load_checkpoint(after)
    tokenizer = checkpoint_tokenizer(ckpt_before)
    hint = "only checkpoints of one tokenizer can be compared word by word"
    same_tokenizer_or_refuse(tokenizer, checkpoint_tokenizer(ckpt_after), str(before), str(after), hint)
    data_cfg = dict(ckpt_before["lmdisc"].get("config", {}).get("data") or {})
    if data_dir is not None:
        data_cfg = {**data_cfg, "_target_": "lmdisc.data.LMDataModule", "path": str(data_dir)}
        data_cfg.update(source=None, download=False)
    elif not data_cfg:
        raise LmdiscError(f"{before} records no data config; pass data_dir=<corpus folder>")
    own = data_dir is None
    datamodule = datamodule_for_checkpoint(data_cfg, ckpt_before, f"checkpoint {before}", own_config=own)
    corpus = datamodule.load()
    scored = [
        _per_word(corpus[split], _token_nll(build_model(c).to(device), datamodule, split, device))
        for c in (ckpt_before, ckpt_after)
    ]
    (first, logp_before), (_, logp_after) = scored
    ends = (corpus[split].word_weight > 0).long()
    word = torch.cumsum(ends, 0) - ends
    last = torch.zeros(int(word[-1]) + 1, dtype=torch.long).scatter_reduce_(
        0, word, torch.arange(len(word)), "amax", include_self=False
    )
    word_of_first = word[first]
    ids = corpus[split].ids.tolist()
    words = [
        tokenizer.word_text(ids[f : int(last[w]) + 1]) for f, w in zip(first.tolist(), word_of_first.tolist())
    ]
    return Comparison(
        split=split,
        words=words,
        train_counts=corpus[split].word_count[first],
        before=logp_before,
        after=logp_after,
        train=corpus["train"],
    )


def bucket_table(cmp: Comparison) -> list[dict]:
    """Per training-frequency bucket: word share, mean log-prob before/after, change, perplexities.

    The buckets are training's (`FrequencyBuckets`), so the "before" columns match the bucket
    table that train.py / eval.py printed for the BEFORE checkpoint.
    """
    rows = {}
    for which in ("before", "after"):
        bucketer = FrequencyBuckets(cmp.train)
        bucketer.add(cmp.train_counts, -getattr(cmp, which), torch.ones(len(cmp.words), dtype=torch.float64))
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

    Only words occurring at least `min_count` times: a single occurrence's change is mostly noise.
    order="gain": largest increase first; "loss": largest decrease first.
    """
    if order not in ("gain", "loss"):
        raise LmdiscError(f"order must be gain or loss, got {order!r}")
    groups: dict[str, list[int]] = {}
    for index, word in enumerate(cmp.words):
        groups.setdefault(word, []).append(index)
    rows = []
    for word, indices in groups.items():
        if len(indices) < max(min_count, 1):
            continue
        at = torch.tensor(indices)
        rows.append(
            {
                "word": word,
                "train_count": int(cmp.train_counts[at[0]]),
                "occurrences": len(indices),
                "logprob_before": float(cmp.before[at].mean()),
                "logprob_after": float(cmp.after[at].mean()),
            }
        )
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
