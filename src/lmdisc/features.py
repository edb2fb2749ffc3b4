"""Hidden states of a language model for downstream use (feature extraction).

Each line of a UTF-8 file is read on its own (no line sees another), with the model's tokenizer:
its words plus its end-of-line token, preceded by one end of line as context (in training every
line follows one; the context's own state is not kept). `features_layer=-1` reads the final hidden
state, the one the output layer reads (`model.features`); `k >= 0` reads the output of block k
(`model.blocks()[k]`, by a forward hook). A line's vector is the mean of its tokens' vectors.

A recurrent model reads a line whole. A transformer reads a line longer than its context in
consecutive windows of `max_positions` tokens, each from scratch: a token sees the earlier tokens
of its own window only. Lines are batched by length with right padding, which a causal model
never reads (a position sees only the positions before it), so a line's features do not depend on
the other lines beyond float rounding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lmdisc.data.corpus import read_utf8_lines
from lmdisc.errors import LmdiscError
from lmdisc.io import atomic_savez

TOKENS_PER_BATCH = 8192


def read_text_lines(path: str | Path, option: str = "features_file") -> list[str]:
    """The lines of a UTF-8 text file; a missing, empty (no word) or non-UTF-8 file is refused."""
    label = f"{option}={path}"
    return read_utf8_lines(
        path, label, f"{label} does not exist (or is not a file)", "it needs at least one line with a word"
    )


def check_layer(model, layer) -> torch.nn.Module | None:
    """The block whose output is read (None for the final hidden state), or a clear refusal."""
    if isinstance(layer, bool) or not isinstance(layer, int) or layer < -1:
        raise LmdiscError(
            f"features_layer must be -1 (the final hidden state) or a block index >= 0, got {layer!r}"
        )
    if layer == -1:
        return None
    blocks = model.blocks()
    if not blocks:
        raise LmdiscError(
            f"features_layer={layer}: {type(model).__name__} has no stack of blocks to read; use "
            "features_layer=-1 (its final hidden state)"
        )
    if layer >= len(blocks):
        raise LmdiscError(
            f"features_layer={layer} is out of range: the model has {len(blocks)} blocks (0..{len(blocks) - 1}), "
            "or -1 for the final hidden state"
        )
    return blocks[layer]


@dataclass
class Row:
    """A piece of a line read in one call: `ids` (context included), from token `start` of the line."""

    line: int
    start: int
    ids: list[int]
    context: int  # leading ids that are context, not the line's tokens


def _rows(lines_ids: list[list[int]], context: list[int], window: int | None) -> list[Row]:
    rows = []
    for index, ids in enumerate(lines_ids):
        full = context + ids
        step = window or len(full)
        for first in range(0, len(full), step):
            skip = max(len(context) - first, 0)
            rows.append(Row(index, max(first - len(context), 0), full[first : first + step], skip))
    return rows


def _batches(rows: list[Row], budget: int) -> list[list[Row]]:
    """Rows of similar length together (sorted), at most `budget` padded tokens per batch."""
    batches, current = [], []
    for row in sorted(rows, key=lambda r: len(r.ids)):
        if current and len(row.ids) * (len(current) + 1) > budget:
            batches.append(current)
            current = []
        current.append(row)
    return batches + ([current] if current else [])


@torch.inference_mode()
def extract_features(
    model,
    tokenizer,
    lines: Sequence[str],
    layer: int = -1,
    per_token: bool = False,
    device: torch.device | str = "cpu",
    tokens_per_batch: int = TOKENS_PER_BATCH,
) -> dict[str, np.ndarray]:
    """{"features": [lines, H] mean-pooled}, plus with `per_token` "token_features" [tokens, H],
    "offsets" [lines + 1] (line i's tokens are offsets[i]:offsets[i+1]) and "token_ids" [tokens]."""
    block = check_layer(model, layer)
    was_training = model.training
    model.eval()
    encoded = [tokenizer.encode_lines([line]) for line in lines]
    lines_ids = [e.ids.tolist() for e in encoded]
    context = tokenizer.encode_lines([""]).ids.tolist()  # one end of line
    window = None if getattr(model, "carries_state", True) else model.max_positions
    if window is not None and window <= len(context):
        raise LmdiscError(
            f"the model's context ({window} tokens) cannot hold a line after its end-of-line context"
        )
    pieces: list[list[tuple[int, torch.Tensor]]] = [[] for _ in lines_ids]  # (start, [n, H]) per line
    captured: list[torch.Tensor] = []

    def capture(module, args, output):
        captured.append(output[0] if isinstance(output, tuple) else output)

    handle = block.register_forward_hook(capture) if block is not None else None
    try:
        for batch in _batches(_rows(lines_ids, context, window), tokens_per_batch):
            length = max(len(r.ids) for r in batch)
            tokens = torch.zeros(len(batch), length, dtype=torch.long)
            for b, row in enumerate(batch):
                tokens[b, : len(row.ids)] = torch.tensor(row.ids)
            captured.clear()
            hidden, _, _ = model.features(tokens.to(device), None)
            hidden = (captured[-1] if block is not None else hidden).float().cpu()
            for b, row in enumerate(batch):
                pieces[row.line].append((row.start, hidden[b, row.context : len(row.ids)].clone()))
    finally:
        if handle is not None:
            handle.remove()
        model.train(was_training)
    stacked = [torch.cat([piece for _, piece in sorted(line, key=lambda p: p[0])]) for line in pieces]
    out = {"features": torch.stack([s.mean(0) for s in stacked]).numpy().astype(np.float32)}
    if per_token:
        out["token_features"] = torch.cat(stacked).numpy().astype(np.float32)
        out["offsets"] = np.cumsum([0] + [len(ids) for ids in lines_ids], dtype=np.int64)
        out["token_ids"] = np.array([i for ids in lines_ids for i in ids], dtype=np.int64)
    out["unknown_words"] = np.int64(sum(e.unknown for e in encoded))
    return out


def write_features(arrays: dict[str, np.ndarray], path: str | Path) -> Path:
    """An .npz of `arrays`, written to a temporary file and renamed into place."""
    return atomic_savez(arrays, Path(path))
