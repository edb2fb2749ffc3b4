"""The pipeline config's grid and evaluations, checked and put in one shape before anything runs
(a typo found after the base trained for an hour costs the hour).

An arm is a list of overrides (the learning rates are `finetune.lrs`, the seeds `finetune.seeds`,
the run starts from the base checkpoint) or a mapping `{overrides: [...], lrs: [...], seeds: [...],
init_from: base|none}`: its own learning rates or seeds (e.g. more seeds for the arms a first pass
chose, without re-running the others), and `init_from: none` for a run from the model config itself
(a pretrained model, or a model trained from scratch). An extra evaluation is a list of eval.py overrides (scored for
every run and not for the base) or a mapping `{overrides, runs: all|best, base: false,
score: null|valid|test}`; `score` makes it a per-word scoring of that split's text (eval.py
score_file), whose per-line numbers feed the paired bootstrap.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from lmdisc.errors import LmdiscError

NAME = re.compile(r"[A-Za-z0-9_-]+")
ARM_KEYS = {"overrides", "lrs", "seeds", "init_from"}
INITS = ("base", "none")
EVAL_KEYS = {"overrides", "runs", "base", "score"}
EVAL_RUNS = ("all", "best")
SCORE_SPLITS = ("valid", "test")


@dataclass(frozen=True)
class Arm:
    name: str
    overrides: tuple[str, ...]
    lrs: tuple[float, ...]
    seeds: tuple[int, ...]
    init: str | None  # base | none; None: the pipeline's default (base when there is a base checkpoint)


@dataclass(frozen=True)
class EvalSpec:
    name: str
    overrides: tuple[str, ...]
    runs: str  # all | best (each arm's runs at its best learning rate by validation)
    base: bool  # also the base model
    score: str | None  # None: eval.py's splits; valid | test: score_file of that split's text

    @property
    def done_file(self) -> str:
        return f"{self.score}.scores.summary.json" if self.score else "metrics.json"


def lr_label(lr: float) -> str:
    """A learning rate as it appears in a run's name: 15 significant digits, so near-equal rates differ."""
    return format(lr, ".15g")


def _overrides(value, where: str) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(o, str) for o in value):
        raise LmdiscError(f"{where} must be a list of overrides, got {value!r}")
    return tuple(value)


def _name(name, where: str) -> str:
    if not NAME.fullmatch(str(name)):
        raise LmdiscError(f"{where}: {name!r} is not a usable run name (letters, digits, _ and -)")
    return str(name)


def _lrs(lrs, where: str) -> tuple[float, ...]:
    bad = [
        lr
        for lr in lrs
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0 or not math.isfinite(lr)
    ]
    if bad:
        raise LmdiscError(f"{where} must be positive numbers, got {bad}")
    if len({lr_label(lr) for lr in lrs}) != len(lrs):
        raise LmdiscError(f"{where} has a repeated value: {list(lrs)}")
    return tuple(lrs)


def _seeds(seeds, where: str) -> tuple[int, ...]:
    if any(isinstance(seed, bool) or not isinstance(seed, int) for seed in seeds):
        raise LmdiscError(f"{where} must be integers, got {list(seeds)}")
    if len(set(seeds)) != len(seeds):
        raise LmdiscError(f"{where} has a repeated value: {list(seeds)}")
    return tuple(seeds)


def _arm(name: str, value, default_lrs, default_seeds) -> Arm:
    where = f"pipeline.finetune.arms.{name}"
    if not isinstance(value, Mapping):
        return Arm(name, _overrides(value, where), tuple(default_lrs), tuple(default_seeds), None)
    unknown = set(value) - ARM_KEYS
    if unknown:
        raise LmdiscError(f"{where} has unknown keys {sorted(unknown)}; an arm may set {sorted(ARM_KEYS)}")
    init = value.get("init_from", ...)
    if init is not ... and (init if init is not None else "none") not in INITS:
        raise LmdiscError(f"{where}.init_from must be base or none, got {init!r}")
    lrs, seeds = value.get("lrs"), value.get("seeds")
    own_lrs = _lrs(lrs, f"{where}.lrs") if lrs is not None else tuple(default_lrs)
    own_seeds = _seeds(seeds, f"{where}.seeds") if seeds is not None else tuple(default_seeds)
    init = None if init is ... else (init or "none")
    return Arm(name, _overrides(value.get("overrides") or [], f"{where}.overrides"), own_lrs, own_seeds, init)


def arms_of(finetune: Mapping) -> list[Arm]:
    """Every arm with its overrides, learning rates, seeds and start; refuses an empty, duplicated or
    out-of-range grid."""
    arms, lrs, seeds = finetune.get("arms") or {}, finetune.get("lrs") or [], finetune.get("seeds") or []
    if lrs:
        _lrs(lrs, "pipeline.finetune.lrs")
    _seeds(seeds, "pipeline.finetune.seeds")
    parsed = [_arm(_name(arm, "pipeline.finetune.arms"), value, lrs, seeds) for arm, value in arms.items()]
    if not parsed or any(not arm.lrs or not arm.seeds for arm in parsed):
        raise LmdiscError(
            f"pipeline.finetune needs at least one arm, lr and seed; got arms={list(arms)}, lrs={list(lrs)}, "
            f"seeds={list(seeds)} (an arm may give its own: arms.NAME.lrs, arms.NAME.seeds)"
        )
    return parsed


def check_pairs(paired, arms: list[Arm]) -> None:
    """`pipeline.paired`: [[A, B], ...], each an arm named twice over; a typo would silently drop
    the comparison from results.md."""
    names = [arm.name for arm in arms]
    for pair in paired or []:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2 or not set(pair) <= set(names):
            raise LmdiscError(f"pipeline.paired: {pair!r} must name two arms of {names}, as [A, B] (A − B)")


def check_grid(finetune: Mapping) -> None:
    """Refuse an empty, duplicated or out-of-range grid before the base trains for an hour."""
    arms_of(finetune)
    evals_of(finetune)


def _eval(name: str, value) -> EvalSpec:
    where = f"pipeline.finetune.extra_evals.{name}"
    if not isinstance(value, Mapping):
        return EvalSpec(name, _overrides(value, where), "all", False, None)
    unknown = set(value) - EVAL_KEYS
    if unknown:
        raise LmdiscError(
            f"{where} has unknown keys {sorted(unknown)}; an evaluation may set {sorted(EVAL_KEYS)}"
        )
    runs, score = value.get("runs", "all"), value.get("score")
    if runs not in EVAL_RUNS:
        raise LmdiscError(f"{where}.runs must be one of {list(EVAL_RUNS)}, got {runs!r}")
    if score is not None and score not in SCORE_SPLITS:
        raise LmdiscError(f"{where}.score must be null or one of {list(SCORE_SPLITS)}, got {score!r}")
    overrides = _overrides(value.get("overrides") or [], f"{where}.overrides")
    if score and not any(o.lstrip("+").startswith("data=") for o in overrides):
        raise LmdiscError(
            f"{where} scores the {score} text of a corpus: name it in its overrides (data=ptb, data=wikitext2, ...)"
        )
    return EvalSpec(name, overrides, runs, bool(value.get("base", False)), score)


def evals_of(finetune: Mapping) -> list[EvalSpec]:
    """The extra evaluations, and a `score_with` that names one scored for every run."""
    specs = [
        _eval(_name(name, "pipeline.finetune.extra_evals"), value)
        for name, value in (finetune.get("extra_evals") or {}).items()
    ]
    score_with = finetune.get("score_with")
    if score_with is not None:
        usable = [s.name for s in specs if s.runs == "all" and not s.score]
        if score_with not in usable:
            raise LmdiscError(
                f"pipeline.finetune.score_with={score_with!r} must name an extra evaluation of every run "
                f"(runs: all, no score); usable: {usable}"
            )
    return specs
