"""Per-token surprisal and entropy of any text under a trained LM (uncertainty / anomaly detection).

The text is read as one stream in the checkpoint's vocabulary (one <eos> per line, unknown
words mapped to <unk> and counted), one column, state carried: the same protocol as the test
split, so the file's perplexity equals eval.py's test perplexity on the same text. The stream's
first token has no context and is not scored.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from lmdisc.data.batching import WindowDataset, WindowSampler, layout_stream
from lmdisc.data.corpus import encode_lines, read_lines
from lmdisc.data.vocab import EOS, Vocabulary
from lmdisc.io import atomic_write_json, atomic_write_text
from lmdisc.losses.base import gather_nll
from lmdisc.metrics.uncertainty import token_entropy_bits

LN2 = math.log(2)


@dataclass
class ScoredText:
    tokens: list[dict]
    lines: list[dict]
    summary: dict


@torch.inference_mode()
def score_lines(
    model: torch.nn.Module,
    vocab: Vocabulary,
    lines: list[str],
    bptt: int = 35,
    device: str | torch.device = "cpu",
) -> ScoredText:
    """Surprisal (bits) and predictive entropy (bits) of every token after the first."""
    ids, unknown = encode_lines(lines, vocab)
    words = [w for line in lines for w in [*line.split(), EOS]]
    line_of = [i for i, line in enumerate(lines) for _ in range(len(line.split()) + 1)]
    batches = layout_stream(ids, 1)
    dataset = WindowDataset(batches)
    model.eval()
    state = None
    surprisal: list[float] = []
    entropy: list[float] = []
    for window in WindowSampler(batches.length, bptt):
        inputs, targets = dataset[window]
        logits, state, _ = model(inputs.to(device), state)
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        nll = gather_nll(log_probs, targets.to(device))[0]
        keep = (targets[0] >= 0).to(device)
        surprisal.extend((nll[keep] / LN2).tolist())
        entropy.extend(token_entropy_bits(log_probs)[0][keep].tolist())
    tokens = [
        {
            "line": line_of[i],
            "position": i,
            "word": words[i],
            "in_vocab": words[i] in vocab,
            "surprisal_bits": surprisal[i - 1] if i else None,
            "entropy_bits": entropy[i - 1] if i else None,
        }
        for i in range(len(words))
    ]
    per_line: dict[int, list[float]] = {}
    for row in tokens[1:]:
        per_line.setdefault(row["line"], []).append(row["surprisal_bits"])
    line_rows = [
        {
            "line": i,
            "tokens": len(bits),
            "mean_surprisal_bits": sum(bits) / len(bits),
            "ppl": 2 ** (sum(bits) / len(bits)),
        }
        for i, bits in sorted(per_line.items())
    ]
    total_bits = sum(surprisal)
    summary = {
        "tokens_scored": len(surprisal),
        "unknown_words": unknown,
        "mean_surprisal_bits": total_bits / max(len(surprisal), 1),
        "loss": total_bits * LN2 / max(len(surprisal), 1),
        "ppl": 2 ** (total_bits / max(len(surprisal), 1)),
        "mean_entropy_bits": sum(entropy) / max(len(entropy), 1),
    }
    return ScoredText(tokens, line_rows, summary)


def write_scores(scored: ScoredText, path: Path, fmt: str | None = None) -> list[Path]:
    """Tokens as JSON lines (.jsonl) or CSV (.csv); per-line perplexities and the summary beside them."""
    path = Path(path)
    fmt = fmt or ("csv" if path.suffix == ".csv" else "jsonl")
    if fmt == "csv":
        import io

        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(scored.tokens[0]))
        writer.writeheader()
        writer.writerows(scored.tokens)
        atomic_write_text(buffer.getvalue(), path)
    elif fmt == "jsonl":
        atomic_write_text("".join(json.dumps(row) + "\n" for row in scored.tokens), path)
    else:
        raise ValueError(f"score format must be jsonl or csv, got {fmt!r}")
    lines_path = path.with_name(path.stem + ".lines.jsonl")
    atomic_write_text("".join(json.dumps(row) + "\n" for row in scored.lines), lines_path)
    summary_path = path.with_name(path.stem + ".summary.json")
    atomic_write_json(scored.summary, summary_path)
    return [path, lines_path, summary_path]


def score_file(model, vocab: Vocabulary, file: Path, out: Path, bptt: int = 35, device="cpu") -> ScoredText:
    """Score a UTF-8 text file (empty or non-UTF-8 files are refused by `read_lines`)."""
    scored = score_lines(model, vocab, read_lines(Path(file)), bptt, device)
    write_scores(scored, out)
    return scored
