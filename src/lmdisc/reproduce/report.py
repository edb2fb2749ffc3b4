"""results.md and plots of a reproduce pipeline: every arm at its best learning rate by validation.

Means and standard deviations are over seeds (sample std, n-1). The per-bucket numbers are on the
test split the runs were evaluated on (a named slice, when the pipeline has slices); "change" is
relative to the base model the arms were fine-tuned from. The validation curves and the moved mass
come from each run's logs: CSV, else its W&B run's (`run_logs.py`). A transfer pipeline
(`pipeline.report: transfer`) has its own table (`report_transfer.py`); the study's discriminator,
slices and full-split sections are in `report_study.py`.
"""

from __future__ import annotations

import functools
import statistics
from collections import defaultdict
from pathlib import Path

import yaml

from lmdisc.analysis.plotting import headless_pyplot, save_figure
from lmdisc.io import atomic_write_json, atomic_write_text

from .numbers import mean_std as _mean_std
from .numbers import pm as _pm
from .numbers import tokens_per_s as _tokens_per_s
from .numbers import word_ppl as _word_ppl
from .report_study import discriminator_section, full_split_sections, slices_section
from .report_transfer import write_transfer_report
from .run_logs import metric_rows
from .selection import best_by_validation
from .stages import stage_record

__all__ = ["best_by_validation", "mass_moved", "val_curve", "write_report"]


@functools.cache
def _rows(run_dir: str) -> list[dict]:
    """A run's logged rows (CSV, else W&B), read once: the curves and the moved mass both need them."""
    return metric_rows(run_dir, stage_record(run_dir).get("resumed_at", {}))


def val_curve(run_dir: str) -> list[tuple[int, float]]:
    return [(r["step"], float(r["val/ppl"])) for r in _rows(str(run_dir)) if "val/ppl" in r]


def mass_moved(run_dir: str) -> dict[str, float]:
    """Training average of each logged train/rkl/mass_moved/<bucket> (empty for arms without rkl)."""
    sums: dict[str, list[float]] = defaultdict(list)
    for row in _rows(str(run_dir)):
        for key, value in row.items():
            if key.startswith("train/rkl/mass_moved/"):
                sums[key.rsplit("/", 1)[1]].append(float(value))
    return {bucket: statistics.fmean(v) for bucket, v in sums.items()}


def _bucket_table(base: dict, best: dict[str, dict]) -> list[str]:
    arms = list(best)
    lines = [
        "| train count | test share | base | " + " | ".join(arms) + " |",
        "|---|---|---|" + "---|" * len(arms),
    ]
    for i, row in enumerate(base["buckets"]["test"]):
        if not row["tokens"]:
            continue
        cells = [_pm([r["buckets"]["test"][i]["ppl"] for r in best[arm]["runs"]], 1) for arm in arms]
        lines.append(
            f"| {row['bucket']} | {row['share']:.3f} | {row['ppl']:.1f} | " + " | ".join(cells) + " |"
        )
    return lines


def plot_bucket_change(base: dict, best: dict[str, dict], path: Path):
    """Mean test log-prob change vs the base per frequency bucket, one line per arm (± std over seeds)."""
    plt = headless_pyplot()
    rows = [(i, r) for i, r in enumerate(base["buckets"]["test"]) if r["tokens"]]
    names = [r["bucket"] for _, r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    for arm, info in best.items():
        changes = [
            [run["buckets"]["test"][i]["mean_logprob"] - r["mean_logprob"] for run in info["runs"]]
            for i, r in rows
        ]
        stats = [_mean_std(c) for c in changes]
        ax.errorbar(
            names,
            [m for m, _ in stats],
            yerr=[s for _, s in stats],
            marker="o",
            capsize=3,
            label=f"{arm} (lr {info['lr']:g})",
        )
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xlabel("training-set count of the target word")
    ax.set_ylabel("mean log-prob change vs base (nats)")
    ax.set_title("Where fine-tuning moved probability (test split)")
    return save_figure(fig, [ax], path)


def plot_val_curves(base: dict, best: dict[str, dict], path: Path):
    """Validation PPL during fine-tuning, per arm at its best lr (mean over seeds)."""
    plt = headless_pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for arm, info in best.items():
        curves = [val_curve(run["dir"]) for run in info["runs"]]
        curves = [c for c in curves if c]
        if not curves:
            continue
        length = min(len(c) for c in curves)
        steps = [0] + [step for step, _ in curves[0][:length]]
        means = [base["val/ppl"]] + [statistics.fmean(c[j][1] for c in curves) for j in range(length)]
        ax.plot(steps, means, marker="o", label=f"{arm} (lr {info['lr']:g})")
    ax.axhline(base["val/ppl"], color="black", ls="--", lw=0.8, label="base (step 0)")
    ax.set_xlabel("fine-tuning step")
    ax.set_ylabel("validation perplexity")
    return save_figure(fig, [ax], path)


def write_report(results: dict, out_dir: Path, title: str, command: str) -> Path:
    """Write results.md, results.json and the two plots into `out_dir`; returns results.md."""
    _rows.cache_clear()  # read the logs as they are now, once each
    if results.get("kind", "rkl") == "transfer":
        return write_transfer_report(results, out_dir, title, command)
    out_dir = Path(out_dir)
    base, runs = results["base"], [r for r in results["runs"] if "val/ppl" in r]
    best = best_by_validation(runs)
    lrs = sorted({r["lr"] for r in runs})
    seeds = sorted({r["seed"] for r in runs})
    lines = [f"# {title}", "", f"Produced by `{command}`. Means ± sample std over seeds {seeds}.", ""]
    planned = results.get("planned_runs", len(runs))
    if len(runs) < planned:
        lines += [
            f"**Partial: {len(runs)} of {planned} fine-tuning runs have finished.** The tables cover those "
            "only: an arm's best learning rate may change, and its means may rest on fewer seeds, "
            "when the rest come in.",
            "",
        ]
    lines += _base_section(results, base)
    lines += slices_section(results)
    lines += discriminator_section(results)
    lines += [
        "## Learning-rate grid: validation PPL",
        "",
        "| arm | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " |",
        "|---|" + "---|" * len(lrs),
    ]
    for arm, info in best.items():
        cells = []
        for lr in lrs:
            group = info["grid"].get(lr)
            cell = _pm([r["val/ppl"] for r in group]) if group else "–"
            cells.append(f"**{cell}**" if lr == info["lr"] else cell)
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Each arm at its best learning rate (by validation)",
        "",
        "| arm | lr | val PPL | test PPL | test word-level PPL | test Δ vs base | train tokens/s |",
        "|---|---|---|---|---|---|---|",
        f"| base | – | {base['val/ppl']:.2f} | {base['test/ppl']:.2f} | {_word_ppl([base])} | – | – |",
    ]
    for arm, info in best.items():
        tests = [r["test/ppl"] for r in info["runs"]]
        delta = [t - base["test/ppl"] for t in tests]
        lines.append(
            f"| {arm} | {info['lr']:g} | {_pm([r['val/ppl'] for r in info['runs']])} | {_pm(tests)} | "
            f"{_word_ppl(info['runs'])} | {_pm(delta)} | {_tokens_per_s(info['runs'])} |"
        )
    note = "(tokens/s: measured while `jobs` runs shared the machine.)"
    if results.get("slices"):
        note = (
            "(val/test here and in the grid, the buckets and the paired-by-seed gap: the runs' own evaluation, "
            "on the slices above; the other evaluations are below. " + note[1:]
        )
    lines += ["", note]
    lines += _contribution(best)
    lines += ["", *full_split_sections(results, best)]
    lines += ["", "## Test PPL per frequency bucket (best lr)", "", *_bucket_table(base, best)]
    lines += _mass_section(best, [row["bucket"] for row in base["buckets"]["test"]])
    lines += _clipping_section(best)
    change = plot_bucket_change(base, best, out_dir / "bucket_logprob_change.png")
    curves = plot_val_curves(base, best, out_dir / "val_curves.png")
    lines += [
        "",
        "## Plots",
        "",
        f"![bucket change]({change.name})",
        "",
        f"![validation curves]({curves.name})",
        "",
    ]
    atomic_write_json(
        {
            **results,
            "best": {arm: {"lr": i["lr"], "dirs": [r["dir"] for r in i["runs"]]} for arm, i in best.items()},
        },
        out_dir / "results.json",
    )
    path = out_dir / "results.md"
    atomic_write_text("\n".join(lines), path)
    return path


def _base_section(results: dict, base: dict) -> list[str]:
    source = results.get("base_checkpoint") or f"{' '.join(results.get('base_model') or [])} (zero-shot)"
    lines = [
        "## Base model",
        "",
        f"`{source}`: val {base['val/ppl']:.2f}, test {base['test/ppl']:.2f}.",
    ]
    curve = val_curve(results["base_dir"]) if results.get("base_dir") else []
    if len(curve) >= 2:
        last, before = curve[-1][1], curve[-2][1]
        lines.append(
            f"Base training: validation PPL of the last epochs {', '.join(f'{v:.2f}' for _, v in curve[-4:])}; "
            f"the last epoch changed it by {100 * (last - before) / before:+.2f}% (a converged base changes little)."
        )
    return [*lines, ""]


def _contribution(best: dict[str, dict]) -> list[str]:
    if not {"rkl_disc", "control"} <= best.keys():
        return []
    diff = [
        a["test/ppl"] - b["test/ppl"]
        for a, b in zip(
            sorted(best["rkl_disc"]["runs"], key=lambda r: r["seed"]),
            sorted(best["control"]["runs"], key=lambda r: r["seed"]),
        )
    ]
    verdict = "lower" if statistics.fmean(diff) < 0 else "not lower"
    return [
        "",
        f"rkl_disc − control, test PPL, paired by seed: {_pm(diff)} (rkl_disc is {verdict}); "
        "this gap is the discriminator's own contribution.",
    ]


def _mass_section(best: dict[str, dict], bucket_order: list[str]) -> list[str]:
    """`bucket_order`: the base's buckets, rarest first (a W&B log's keys come in no set order)."""
    moved = {arm: [mass_moved(r["dir"]) for r in info["runs"]] for arm, info in best.items()}
    moved = {arm: runs for arm, runs in moved.items() if all(runs)}
    if not moved:
        return []
    rank = {bucket: i for i, bucket in enumerate(bucket_order)}
    buckets = sorted(next(iter(moved.values()))[0], key=lambda b: (rank.get(b, len(rank)), b))
    lines = [
        "",
        "## Probability mass moved per bucket during fine-tuning (Σ over the bucket of q_θ − q_0, training average)",
        "",
        "| arm | " + " | ".join(buckets) + " |",
        "|---|" + "---|" * len(buckets),
    ]
    for arm, runs in moved.items():
        cells = [_pm([run[b] for run in runs], 5) if all(b in run for run in runs) else "–" for b in buckets]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return lines


def _clip_value(run_dir: str) -> float | None:
    config = Path(run_dir) / "config_resolved.yaml"
    if not config.is_file():
        return None
    clip = (yaml.safe_load(config.read_text()).get("trainer") or {}).get("gradient_clip_val")
    return float(clip) if clip else None


def _clipping_section(best: dict[str, dict]) -> list[str]:
    """How often gradient clipping acted, per arm: the logged norms before clipping (`train/grad_norm`)
    against the run's `trainer.gradient_clip_val`. Under SGD a clipped step has the same length
    whatever scaled the gradient (a perplexity factor), so a loss that only rescales it can only
    matter on the steps clipping leaves alone."""
    rows = []
    for arm, info in best.items():
        clips = {_clip_value(run["dir"]) for run in info["runs"]}
        norms = [
            float(r["train/grad_norm"])
            for run in info["runs"]
            for r in _rows(run["dir"])
            if "train/grad_norm" in r
        ]
        if len(clips) != 1 or None in clips or not norms:
            continue
        (clip,) = clips
        clipped = sum(n > clip for n in norms)
        rows.append(
            f"| {arm} | {clip:g} | {len(norms)} | {statistics.median(norms):.3g} | "
            f"{clipped} ({100 * clipped / len(norms):.0f}%) |"
        )
    if not rows:
        return []
    return [
        "",
        "## Gradient clipping (best lr, all seeds; the logged steps' norms before clipping)",
        "",
        "| arm | clip | steps logged | median norm | steps clipped |",
        "|---|---|---|---|---|",
        *rows,
    ]
