"""Collect finished runs into one results table (mean ± std over seeds) and a validation-curve plot.

    python -m lmdisc.analysis.ablation logs/loss_ablation/multiruns/* --out results/loss_ablation

Runs are grouped by loss preset (and alpha, where the preset has one); every run directory
must hold the `metrics.json` and `config_resolved.yaml` that train.py writes.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from collections import defaultdict
from pathlib import Path

import yaml

from lmdisc.analysis.plotting import headless_pyplot, save_figure
from lmdisc.io import atomic_write_text


def find_runs(roots: list[Path]) -> list[Path]:
    runs = sorted({p.parent for root in roots for p in Path(root).rglob("metrics.json")})
    return [r for r in runs if (r / "config_resolved.yaml").is_file()]


def run_label(config: dict) -> str:
    loss = config.get("loss", {})
    label = loss.get("name") or "+".join(loss.get("terms", {})) or "?"
    if "alpha" in loss:
        label += f" (alpha={loss['alpha']:g})"
    optimizer = str(((config.get("optim") or {}).get("optimizer") or {}).get("_target_", ""))
    if optimizer:  # CE vs CE + alpha*PPL is compared under SGD and under AdamW
        label += f" [{optimizer.rsplit('.', 1)[-1]}]"
    data = config.get("data") or {}
    if data.get("noise", "none") != "none":  # experiment=noising_ptb: one row per noise
        label += f" noise={data['noise']} (gamma={data.get('noise_gamma', 0):g})"
    return label


def _mean_std(values: list[float]) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def val_curve(run: Path) -> list[tuple[int, float]]:
    files = sorted(run.glob("csv/version_*/metrics.csv"))
    if not files:
        return []
    with open(files[-1], encoding="utf-8") as handle:
        return [(int(r["step"]), float(r["val/ppl"])) for r in csv.DictReader(handle) if r.get("val/ppl")]


def collect(runs: list[Path]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for run in runs:
        config = yaml.safe_load((run / "config_resolved.yaml").read_text())
        metrics = json.loads((run / "metrics.json").read_text())
        if "test/ppl" not in metrics:
            continue
        groups[run_label(config)].append(
            {"run": run, "seed": config.get("seed"), "metrics": metrics, "curve": val_curve(run)}
        )
    return dict(groups)


def markdown_table(groups: dict[str, list[dict]]) -> str:
    bucket_names: list[str] = []
    for entries in groups.values():
        for entry in entries:
            for b in entry["metrics"].get("buckets", {}).get("test", []):
                if b["bucket"] not in bucket_names:
                    bucket_names.append(b["bucket"])
    header = ["loss", "seeds", "val PPL", "test PPL", *[f"test PPL, count {b}" for b in bucket_names]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, entries in sorted(groups.items()):
        seeds = ",".join(str(e["seed"]) for e in sorted(entries, key=lambda e: e["seed"]))
        row = [
            label,
            seeds,
            _mean_std([e["metrics"]["val/ppl"] for e in entries]),
            _mean_std([e["metrics"]["test/ppl"] for e in entries]),
        ]
        for name in bucket_names:
            values = [
                b["ppl"]
                for e in entries
                for b in e["metrics"].get("buckets", {}).get("test", [])
                if b["bucket"] == name and b["tokens"]
            ]
            row.append(_mean_std(values))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def plot_curves(groups: dict[str, list[dict]], path: Path) -> Path:
    plt = headless_pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, entries in sorted(groups.items()):
        curves = [e["curve"] for e in entries if e["curve"]]
        if not curves:
            continue
        length = min(len(c) for c in curves)
        steps = [s for s, _ in curves[0][:length]]
        values = [[v for _, v in c[:length]] for c in curves]
        mean = [statistics.mean(col) for col in zip(*values)]
        (line,) = ax.plot(steps, mean, marker="o", label=f"{label} (n={len(curves)})")
        ax.fill_between(
            steps,
            [min(col) for col in zip(*values)],
            [max(col) for col in zip(*values)],
            color=line.get_color(),
            alpha=0.2,
        )
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("validation perplexity (mean, band: min-max over seeds)")
    return save_figure(fig, [ax], path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("roots", nargs="+", type=Path, help="run or multirun directories to search")
    parser.add_argument("--out", type=Path, default=Path("results/loss_ablation"))
    args = parser.parse_args(argv)
    runs = find_runs(args.roots)
    if not runs:
        raise SystemExit(f"no finished runs (metrics.json + config_resolved.yaml) under {args.roots}")
    groups = collect(runs)
    table = markdown_table(groups)
    atomic_write_text(table, args.out / "ablation.md")
    plot = plot_curves(groups, args.out / "ablation_curves.png")
    print(table)
    print(f"{len(runs)} runs; wrote {args.out / 'ablation.md'} and {plot}")


if __name__ == "__main__":
    main()
