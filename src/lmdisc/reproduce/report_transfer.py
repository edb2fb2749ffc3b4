"""results.md of a transfer pipeline (`pipeline.report: transfer`): the base as it is (zero-shot, or
a model trained on another corpus) against each arm at its best learning rate, on the corpus the
arms trained on and on every other evaluation (another corpus's test split).

The val/test columns are the runs' own evaluation, or the one `finetune.score_with` names (a
full-split eval.py run). Tokens/s is train.py's (fit time, so validation included); peak memory is
the training process's peak resident memory (host RAM; a GPU's own memory is not measured here).
"""

from __future__ import annotations

from pathlib import Path

from lmdisc.io import atomic_write_json, atomic_write_text

from .numbers import peak_memory, pm, tokens_per_s, word_ppl
from .selection import best_by_validation


def _other_evals(results: dict, best: dict[str, dict]) -> list[str]:
    """The evaluations shown as columns: every one except the runs' own score (`score_with`)."""
    names = {n for info in best.values() for r in info["runs"] for n in (r.get("evals") or {})}
    names |= set(results.get("base_evals") or {})
    return sorted(names - {results.get("score_with")})


def _eval_cell(found: list[dict | None]) -> str:
    if not found or any(f is None for f in found):
        return "–"
    values = [f.get("test/word_ppl", f.get("word_ppl")) for f in found]
    return pm(values) if all(v is not None for v in values) else "–"


def _int(runs: list[dict], key: str) -> str:
    values = {r.get(key) for r in runs}
    return f"{values.pop():,}" if len(values) == 1 and None not in values else "–"


def transfer_lines(results: dict, title: str, command: str) -> tuple[list[str], dict]:
    runs = results["runs"]
    best = best_by_validation([r for r in runs if "val/ppl" in r])
    base = results["base"]
    others = _other_evals(results, best)
    base_name = (
        f"`{results['base_checkpoint']}`"
        if results.get("base_checkpoint")
        else f"{' '.join(results['base_model'])} (zero-shot)"
    )
    lines = [f"# {title}", "", f"Produced by `{command}`.", ""]
    planned = results.get("planned_runs", len(runs))
    scored = sum("val/ppl" in r for r in runs)  # every rate's runs, not only the best ones
    if scored < planned:
        lines += [f"**Partial: {scored} of {planned} runs have finished and been scored.**", ""]
    lines += [f"Base: {base_name}.", ""]
    header = [
        "arm",
        "lr",
        "seeds",
        "val word-level PPL",
        "test word-level PPL",
        *(f"{n}: test word-level PPL" for n in others),
    ]
    header += ["trainable parameters", "train tokens/s", "peak memory (GiB, host RSS)"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    base_others = [_eval_cell([(results.get("base_evals") or {}).get(n)]) for n in others]
    lines.append(
        f"| base | – | – | {base.get('val/word_ppl', float('nan')):.2f} | {base.get('test/word_ppl', float('nan')):.2f} | "
        + " | ".join([*base_others, "–", "–", "–"])
        + " |"
    )
    for arm, info in best.items():
        group = info["runs"]
        cells = [
            arm,
            f"{info['lr']:g}",
            str(len(group)),
            word_ppl(group, "val"),
            word_ppl(group, "test"),
            *(_eval_cell([(r.get("evals") or {}).get(n) for r in group]) for n in others),
            _int(group, "trainable_parameters"),
            tokens_per_s(group),
            peak_memory(group),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "(val/test: the arms' own corpus; the other columns: the test split each named evaluation reads. "
        "tokens/s: train.py's training tokens over its fit time, validation included, while `jobs` runs "
        "shared the machine. Peak memory: the training process's peak resident set, host RAM only.)",
    ]
    if any(len(info["grid"]) > 1 for info in best.values()):
        lrs = sorted({lr for info in best.values() for lr in info["grid"]})
        lines += [
            "",
            "## Learning rates: validation PPL (token-level; the lowest chooses the rate)",
            "",
            "| arm | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " |",
        ]
        lines.append("|---|" + "---|" * len(lrs))
        for arm, info in best.items():
            cells = [
                pm([r["val/ppl"] for r in info["grid"][lr]]) if lr in info["grid"] else "–" for lr in lrs
            ]
            lines.append(
                f"| {arm} | "
                + " | ".join(f"**{c}**" if lr == info["lr"] else c for c, lr in zip(cells, lrs))
                + " |"
            )
    return lines, best


def write_transfer_report(results: dict, out_dir: Path, title: str, command: str) -> Path:
    lines, best = transfer_lines(results, title, command)
    out_dir = Path(out_dir)
    atomic_write_json(
        {
            **results,
            "best": {arm: {"lr": i["lr"], "dirs": [r["dir"] for r in i["runs"]]} for arm, i in best.items()},
        },
        out_dir / "results.json",
    )
    path = out_dir / "results.md"
    atomic_write_text("\n".join([*lines, ""]), path)
    return path
