"""Hydra's sweep syntax as an Optuna search space, and trial values back as Hydra overrides.

The syntax is the one of Hydra's own sweepers (and the published Optuna sweeper), parsed by
Hydra's override parser:
  `choice(a,b)` or `a,b`        -> categorical
  `range(1,9,2)`                -> integers (floats with a float step) 1, 3, 5, 7
  `interval(0.1, 1)`            -> uniform float
  `tag(log, interval(1e-4, 1))` -> log-uniform float
A plain `key=value` is passed unchanged to every trial.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep, Transformer
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from lmdisc.errors import LmdiscError

_PLAIN = re.compile(r"[A-Za-z_/][\w./:@-]*")
_LITERALS = {"true", "false", "null", "nan", "inf"}


def parse_search_space(
    parser: OverridesParser, params: Mapping[str, str], arguments: Iterable[str]
) -> tuple[dict[str, BaseDistribution], list[str]]:
    """(the distributions by key, the fixed overrides): config `params` first, then the command
    line's arguments, a later one replacing an earlier one of the same key."""
    lines = [f"{key}={value}" for key, value in params.items()] + list(arguments)
    space: dict[str, BaseDistribution] = {}
    fixed: dict[str, str] = {}
    for override in parser.parse_overrides(lines):
        key = override.get_key_element()
        space.pop(key, None)
        fixed.pop(key, None)
        if not override.is_sweep_override():
            fixed[key] = f"{key}={override.get_value_element_as_str()}"
        elif override.is_hydra_override():
            raise LmdiscError(f"{override.input_line}: Hydra's own settings cannot be searched")
        else:
            space[key] = distribution(override)
    return space, list(fixed.values())


def distribution(override: Override) -> BaseDistribution:
    sweep = override.value()
    if isinstance(sweep, IntervalSweep):
        return FloatDistribution(float(sweep.start), float(sweep.end), log="log" in sweep.tags)
    if isinstance(sweep, RangeSweep):
        values = list(sweep.range())
        if not values:
            raise LmdiscError(f"{override.input_line}: the range is empty")
        if all(isinstance(v, int) for v in values):
            return IntDistribution(values[0], values[-1], step=int(sweep.step))
        return FloatDistribution(float(values[0]), float(values[-1]), step=float(sweep.step))
    if isinstance(sweep, ChoiceSweep):
        return CategoricalDistribution([Transformer.encode(v) for v in override.sweep_iterator()])
    raise LmdiscError(f"{override.input_line}: not a sweep this sweeper can search")


def override_value(value: Any) -> str:
    """A value as Hydra's override parser reads it back: numbers and plain words as they are,
    anything else quoted."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value)
    if _PLAIN.fullmatch(text) and text.lower() not in _LITERALS:
        return text
    escaped = text.replace("'", "\\'")
    trailing = len(escaped) - len(escaped.rstrip("\\"))
    return "'" + escaped + "\\" * trailing + "'"


def trial_overrides(params: Mapping[str, Any]) -> list[str]:
    return [f"{key}={override_value(value)}" for key, value in params.items()]
