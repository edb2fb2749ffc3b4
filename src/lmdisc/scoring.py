"""Per-word surprisal and entropy of any text under a trained LM (uncertainty / anomaly detection).

The text is read with the model's tokenizer (a word tokenizer maps unknown words to `<unk>` and
counts them) and scored by the protocol its test split would be (one column with the state
carried for recurrent models, the sliding window for transformers), so the file's perplexity
equals eval.py's test perplexity on the same text. Rows are per word: a word's surprisal is the
sum over its tokens (for a word tokenizer, a word is a token), its entropy that of the
distribution its first token was drawn from. The stream's first token has no context and is not
scored.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from lmdisc.data.corpus import TokenizedSplit, count_words, read_lines
from lmdisc.data.tokenizers import EOS, WordTokenizer
from lmdisc.data.window import Window
from lmdisc.evaluation import evaluate_windows
from lmdisc.io import atomic_write_json, atomic_write_text
from lmdisc.metrics.uncertainty import token_entropy_bits

LN2 = math.log(2)


@dataclass
class ScoredText:
    rows: list[dict]  # one per word
    lines: list[dict]
    summary: dict


def _collector(size: int):
    """Per-position NLL and entropy (bits), NaN where a position was not scored."""
    nll = torch.full((size,), float("nan"), dtype=torch.float64)
    entropy = torch.full((size,), float("nan"), dtype=torch.float64)

    def observe(window: Window, token_nll: torch.Tensor, log_probs: torch.Tensor) -> None:
        scored = window.scored
        positions = window.positions[scored].cpu()
        nll[positions] = token_nll[scored].double().cpu()
        entropy[positions] = token_entropy_bits(log_probs)[scored].double().cpu()

    return nll, entropy, observe


@torch.inference_mode()
def score_lines(model: torch.nn.Module, tokenizer, lines: list[str], protocol, device="cpu") -> ScoredText:
    """Surprisal (bits) and predictive entropy (bits) of every word, by `protocol` (the data's)."""
    encoded = tokenizer.encode_lines(lines, "the scored text")
    ids = encoded.ids
    # each word end worth original words / word ends, as in a corpus (a merged end of line, say)
    weight = encoded.word_end.float() * (count_words(lines) / max(float(encoded.word_end.sum()), 1.0))
    split = TokenizedSplit(ids, weight, torch.zeros_like(ids), encoded.unknown)
    nll, entropy, observe = _collector(ids.numel())
    loader = protocol.loader(split, protocol.eval_batch_size("test", 1))
    result = evaluate_windows(model, loader, device, protocol.carries_state, [observe])
    ends = encoded.word_end.nonzero().flatten().tolist()
    starts = [0] + [e + 1 for e in ends[:-1]]
    # a word tokenizer's rows show the text's own words (an unknown word is scored as <unk>)
    original = (
        [w for text in lines for w in (*text.split(), EOS)] if isinstance(tokenizer, WordTokenizer) else None
    )
    rows, line = [], 0
    per_line: dict[int, list[float]] = {}
    for index, (first, last) in enumerate(zip(starts, ends)):
        token_ids = ids[first : last + 1].tolist()
        text = original[index] if original is not None else tokenizer.word_text(token_ids)
        bits = nll[first : last + 1]
        complete = not torch.isnan(bits).any()
        surprisal = float(bits.sum()) / LN2 if complete else None
        row = {"line": line, "position": index, "word": text}
        if isinstance(tokenizer, WordTokenizer):
            row["in_vocab"] = text in tokenizer
        else:
            row["tokens"] = len(token_ids)
        row["surprisal_bits"] = surprisal
        row["entropy_bits"] = float(entropy[first]) if not math.isnan(entropy[first]) else None
        rows.append(row)
        if surprisal is not None:
            per_line.setdefault(line, []).append(surprisal)
        if text in (EOS, "<eol>"):
            line += 1
    line_rows = [
        {
            "line": i,
            "words": len(bits),
            "mean_surprisal_bits": sum(bits) / len(bits),
            "ppl": 2 ** (sum(bits) / len(bits)),
        }
        for i, bits in sorted(per_line.items())
    ]
    scored_entropy = entropy[~torch.isnan(entropy)]
    summary = {
        "tokens_scored": result["tokens"],
        "words_scored": result["words"],
        "unknown_words": encoded.unknown,
        "mean_surprisal_bits": result["loss"] / LN2,
        "loss": result["loss"],
        "ppl": result["ppl"],
        "word_ppl": result["word_ppl"],
        "mean_entropy_bits": float(scored_entropy.mean()) if scored_entropy.numel() else float("nan"),
        "tokenizer": tokenizer.describe(),
    }
    return ScoredText(rows, line_rows, summary)


def write_scores(scored: ScoredText, path: Path, fmt: str | None = None) -> list[Path]:
    """Words as JSON lines (.jsonl) or CSV (.csv); per-line perplexities and the summary beside them."""
    path = Path(path)
    fmt = fmt or ("csv" if path.suffix == ".csv" else "jsonl")
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(scored.rows[0]))
        writer.writeheader()
        writer.writerows(scored.rows)
        atomic_write_text(buffer.getvalue(), path)
    elif fmt == "jsonl":
        atomic_write_text("".join(json.dumps(row) + "\n" for row in scored.rows), path)
    else:
        raise ValueError(f"score format must be jsonl or csv, got {fmt!r}")
    lines_path = path.with_name(path.stem + ".lines.jsonl")
    atomic_write_text("".join(json.dumps(row) + "\n" for row in scored.lines), lines_path)
    summary_path = path.with_name(path.stem + ".summary.json")
    atomic_write_json(scored.summary, summary_path)
    return [path, lines_path, summary_path]


def score_file(model, tokenizer, file: Path, out: Path, protocol, device="cpu") -> ScoredText:
    """Score a UTF-8 text file (empty or non-UTF-8 files are refused by `read_lines`)."""
    scored = score_lines(model, tokenizer, read_lines(Path(file)), protocol, device)
    write_scores(scored, out)
    return scored
