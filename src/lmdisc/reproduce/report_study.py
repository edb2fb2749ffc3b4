"""The study's sections of results.md: the discriminator candidates against the zero head, the
slices the grid was scored on, and each arm at its best learning rate scored on a full split, with
paired differences and bootstrap intervals over the split's lines (`bootstrap.py`)."""

from __future__ import annotations

from .bootstrap import paired_arrays, paired_bootstrap
from .numbers import ZERO_HEAD_BCE, pm

# the comparisons of the paper's claim: the discriminator's own contribution, and against plain CE
DEFAULT_PAIRS = (("rkl_disc", "control"), ("rkl_disc", "ce"))


def discriminator_section(results: dict) -> list[str]:
    discs = results.get("discriminators") or {}
    chosen = results.get("discriminator")
    if not discs and chosen is None:  # a pipeline without one (discriminator: null)
        return []
    lines = ["## Discriminator", ""]
    if chosen is not None and chosen.get("scored_only"):
        lines.append(f"Given (scored here, not trained): `{chosen.get('checkpoint')}`.")
    elif discs:
        lines.append(
            f"Trained on the `{(chosen or {}).get('train_split', 'heldout')}` split against the base; the candidate "
            "with the lowest validation BCE is used."
        )
    lines += [
        f"Zero head (s ≡ 0): BCE 2 ln 2 = {ZERO_HEAD_BCE:.5f}, AUC 0.5. A discriminator that does not beat it "
        "carries no information about where q0 errs.",
        "",
        "| candidate | val BCE | val acc | val AUC | estimated KL(q0‖p) (nats) | beats the zero head |",
        "|---|---|---|---|---|---|",
    ]
    for name, metrics in (discs or {"discriminator": chosen}).items():
        if metrics is None:
            lines.append(f"| {name} | ≥ {ZERO_HEAD_BCE:.5f} (nothing saved) | – | – | – | **no** |")
            continue
        beats = "yes" if metrics["val/disc_bce"] < ZERO_HEAD_BCE else "**no**"
        mark = " (chosen)" if metrics is chosen or metrics == chosen else ""
        lines.append(
            f"| {name}{mark} | {metrics['val/disc_bce']:.5f} | {metrics['val/disc_acc']:.4f} | "
            f"{metrics['val/disc_auc']:.4f} | {metrics['val/kl_q0_p']:.4f} | {beats} |"
        )
    if chosen is None:
        lines += [
            "",
            "**No discriminator beat the zero head.** The arms that need one were not run: "
            f"{', '.join(results.get('skipped_arms') or []) or '–'}.",
        ]
    elif chosen["val/disc_bce"] >= ZERO_HEAD_BCE:
        lines += ["", "**The discriminator used does not beat the zero head.**"]
    return [*lines, ""]


def slices_section(results: dict) -> list[str]:
    slices = results.get("slices") or {}
    if not slices:
        return []
    lines = [
        "## Slices",
        "",
        "Fixed line ranges [start, stop) of the corpus's own files (training text whole):",
        "",
    ]
    for name, s in slices.items():
        parts = [
            f"{split} lines {s[split]['lines']}"
            + (f" ({s[split]['words']:,} words)" if "words" in s[split] else "")
            for split in ("valid", "test")
        ]
        lines.append(f"- `{name}` of `{s['from']}`: {', '.join(parts)}")
    return [*lines, ""]


def _scored(runs: list[dict], name: str) -> list[dict] | None:
    found = [(r.get("evals") or {}).get(name) for r in runs]
    return found if found and all(f is not None for f in found) else None


def _value(scores: dict, key: str) -> float | None:
    """A score file's summary names it `key`; an evaluation's metrics.json `test/key`."""
    return scores.get(key, scores.get(f"test/{key}"))


def full_split_sections(results: dict, best: dict[str, dict]) -> list[str]:
    """One section per evaluation of the best runs (`runs: best`): word-level PPL per arm, and the
    paired differences with their bootstrap intervals when it scored per line."""
    names = sorted({n for info in best.values() for r in info["runs"] for n in (r.get("evals") or {})})
    lines = []
    for name in names:
        per_arm = {arm: _scored(info["runs"], name) for arm, info in best.items()}
        per_arm = {arm: found for arm, found in per_arm.items() if found}
        if not per_arm:
            continue
        base = (results.get("base_evals") or {}).get(name)
        lines += [
            f"## Each arm at its best learning rate, scored by `{name}`",
            "",
            "| arm | lr | runs | word-level PPL | token-level PPL | word-level Δ vs base |",
            "|---|---|---|---|---|---|",
        ]
        ref = _value(base, "word_ppl") if base else None
        if base:
            tokens = _value(base, "ppl")
            shown = "–" if tokens is None else f"{tokens:.2f}"
            lines.append(f"| base | – | 1 | {ref:.2f} | {shown} | – |")
        for arm, found in per_arm.items():
            words = [_value(f, "word_ppl") for f in found]
            tokens = [_value(f, "ppl") for f in found]
            delta = pm([w - ref for w in words]) if ref is not None else "–"
            lines.append(
                f"| {arm} | {best[arm]['lr']:g} | {len(found)} | {pm(words)} | {pm(tokens)} | {delta} |"
            )
        lines += ["", *_paired(results, best, name), ""]
    return lines


def _paired(results: dict, best: dict[str, dict], name: str) -> list[str]:
    pairs = [tuple(p) for p in (results.get("paired") or DEFAULT_PAIRS)]
    out = []
    for a, b in pairs:
        if a not in best or b not in best:
            continue
        by_seed = {
            arm: {r["seed"]: (r.get("evals") or {}).get(name) for r in best[arm]["runs"]} for arm in (a, b)
        }
        seeds = sorted(s for s in by_seed[a] if s in by_seed[b])
        files = [(by_seed[a][s].get("lines_file"), by_seed[b][s].get("lines_file")) for s in seeds]
        if not seeds or not all(x and y for x, y in files):
            continue
        if not out:
            out += [
                "Paired differences (A − B), paired by seed and by line: the seed-averaged difference, with a "
                "95% percentile bootstrap interval over the split's lines (2,000 resamples; each resample "
                "draws the lines once for every seed, so the interval is over lines, not seeds). Per-seed "
                "differences show the spread over seeds.",
                "",
                "| A − B | seeds | Δ word-level PPL [95% interval] | Δ NLL per word, nats [95% interval] | per seed (Δ PPL) | verdict |",
                "|---|---|---|---|---|---|",
            ]
        result = paired_bootstrap(*paired_arrays(files))
        per_seed = [
            by_seed[a][s].get("word_ppl", float("nan")) - by_seed[b][s].get("word_ppl", float("nan"))
            for s in seeds
        ]
        low, high = result["ppl_interval"]
        verdict = (
            f"{a} lower"
            if high < 0
            else f"{a} higher"
            if low > 0
            else "no difference shown (interval holds 0)"
        )
        nll_low, nll_high = result["nll_interval"]
        out.append(
            f"| {a} − {b} | {len(seeds)} | {result['delta_word_ppl']:+.3f} [{low:+.3f}, {high:+.3f}] | "
            f"{result['delta_nll_per_word']:+.5f} [{nll_low:+.5f}, {nll_high:+.5f}] | "
            f"{', '.join(f'{d:+.2f}' for d in per_seed)} | {verdict} |"
        )
        results.setdefault("bootstrap", {})[f"{name}:{a}-{b}"] = {**result, "seeds_paired": seeds}
    return out
