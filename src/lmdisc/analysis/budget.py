"""Runs compared at one wall-clock budget (`trainer.max_time`): a table and the validation curves.

    python -m lmdisc.analysis.budget RUN_DIR [RUN_DIR ...] --out results/gpt_vs_lstm_20min/ptb

Every run directory holds what train.py writes (`metrics.json`, `config_resolved.yaml`,
`csv/version_0/metrics.csv`). The curves plot word-level validation perplexity (token-level for
a word tokenizer is the same number) against the run's time, placed by step: a validation at
step s of S is drawn at s / S of the fit time (validation time is spread in with the steps).
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import yaml

from lmdisc.analysis.plotting import headless_pyplot, save_figure
from lmdisc.io import atomic_write_text

COLUMNS = (
    "model",
    "tokenizer",
    "parameters",
    "steps (epochs)",
    "train tokens/s",
    "val PPL",
    "val word PPL",
    "test PPL",
    "test word PPL",
)


def summary(run: Path) -> dict:
    metrics = json.loads((run / "metrics.json").read_text())
    config = yaml.safe_load((run / "config_resolved.yaml").read_text())
    target = config["model"]["_target_"].rsplit(".", 1)[-1]
    return {
        "run": run,
        "model": target,
        "tokenizer": metrics["tokenizer"].split(" (")[0] + f" {metrics['vocab_size']:,}",
        "parameters": f"{metrics['parameters'] / 1e6:.1f}M",
        "steps (epochs)": f"{metrics['global_step']:,} ({metrics['epochs']})",
        "train tokens/s": f"{metrics['train_tokens_per_s']:,.0f}",
        "val PPL": f"{metrics['val/ppl']:.2f}",
        "val word PPL": f"{metrics['val/word_ppl']:.2f}",
        "test PPL": f"{metrics['test/ppl']:.2f}",
        "test word PPL": f"{metrics['test/word_ppl']:.2f}",
        "metrics": metrics,
    }


def curve(run: Path, metrics: dict) -> list[tuple[float, float]]:
    """(minutes into the fit, validation word-level PPL) of every validation."""
    with open(run / "csv" / "version_0" / "metrics.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("val/word_ppl")]
    scale = metrics["fit_seconds"] / 60 / max(metrics["global_step"], 1)
    return [(int(r["step"]) * scale, float(r["val/word_ppl"])) for r in rows]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="writes OUT.md and OUT.png")
    parser.add_argument("--title", default="validation at a wall-clock budget")
    args = parser.parse_args(argv)
    rows = [summary(run) for run in args.runs]
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(row[c]) for c in COLUMNS) + " |" for row in rows]
    atomic_write_text("\n".join(lines) + "\n", args.out.with_suffix(".md"))
    plt = headless_pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for row in rows:
        points = curve(row["run"], row["metrics"])
        ax.plot(
            [p[0] for p in points],
            [p[1] for p in points],
            marker="o",
            label=f"{row['model']} ({row['tokenizer']})",
        )
    ax.set_yscale("log")
    ax.set_xlabel("minutes of training (placed by step)")
    ax.set_ylabel("validation word-level perplexity")
    ax.set_title(args.title)
    save_figure(fig, [ax], args.out.with_suffix(".png"))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
