"""Every entry point's numeric options, checked in one place before any work starts.

Each rule names an option, the values it allows and, by saying so in its message, the range. A
rule applies only where the composed config has the key, so one table serves train.py,
train_disc.py, generate.py and reproduce.py. Why not Hydra structured configs: our groups are
open (an experiment file may add keys, a model config differs per architecture), and a schema
would have to be kept in step with every YAML file; the checks that matter are ranges (lr > 0,
finite), which a dataclass type does not express. Choices (a tokenizer name, a protocol) are
checked where the choice is made, with the list of what exists.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lmdisc.errors import LmdiscError


def _number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float))


def _integer(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int)


@dataclass(frozen=True)
class Rule:
    """`key` (may hold `*` for one level, e.g. loss.terms.*.weight) must satisfy `check`."""

    key: str
    check: Callable[[Any], bool]
    allowed: str
    nullable: bool = False


def positive_finite(key: str) -> Rule:
    return Rule(key, lambda v: _number(v) and math.isfinite(v) and v > 0, "a finite number > 0")


def non_negative_finite(key: str, why: str = "", nullable: bool = False) -> Rule:
    allowed = "a finite number >= 0" + (" or null" if nullable else "") + (f" ({why})" if why else "")
    return Rule(key, lambda v: _number(v) and math.isfinite(v) and v >= 0, allowed, nullable)


def whole_number(key: str, minimum: int = 1, nullable: bool = False) -> Rule:
    allowed = f"a whole number >= {minimum}" + (" or null" if nullable else "")
    return Rule(key, lambda v: _integer(v) and v >= minimum, allowed, nullable)


RULES: tuple[Rule, ...] = (
    Rule("seed", _integer, "an integer"),
    positive_finite("optim.optimizer.lr"),
    Rule(
        "optim.layer_decay",
        lambda v: _number(v) and 0 < v <= 1,
        "a number in (0, 1] (1: every layer at optim.optimizer.lr)",
    ),
    whole_number("finetune.n"),
    whole_number("finetune.unfreeze_every_n_epochs", minimum=0),
    # the loss terms' weights: 0 switches a term off
    non_negative_finite("loss.alpha", "0 switches the perplexity term off"),
    non_negative_finite("loss.lam", "0 switches the reverse-KL term off"),
    non_negative_finite("loss.terms.*.weight"),
    # torch's clip_grad_norm_ multiplies by max_norm / norm: a negative value flips every gradient
    non_negative_finite("trainer.gradient_clip_val", "0 or null: no clipping", nullable=True),
    whole_number("trainer.accumulate_grad_batches"),
    whole_number("trainer.max_epochs", minimum=-1),
    whole_number("trainer.max_steps", minimum=-1),
    whole_number("trainer.log_every_n_steps"),
    whole_number("data.batch_size"),
    whole_number("data.eval_batch_size"),
    whole_number("data.bptt"),
    whole_number("data.block_size", nullable=True),
    # data noising: the chance that each training input is replaced (1 would leave no input at all)
    Rule(
        "data.noise_gamma",
        lambda v: _number(v) and math.isfinite(v) and 0 <= v < 1,
        "a number in [0, 1) (the chance that each training input is replaced)",
    ),
    whole_number("ce_chunk_size", nullable=True),
    whole_number("discriminator.k"),
    whole_number("max_new_tokens"),
    whole_number("num_samples"),
    whole_number("jobs"),
    # eval.py's features: -1 is the final hidden state, k >= 0 block k's output
    whole_number("features_layer", minimum=-1),
)


def _matches(cfg: DictConfig, pattern: str) -> Iterator[tuple[str, Any]]:
    """(key, value) of each key in `cfg` that `pattern` names (no interpolation is left unresolved)."""
    head, _, rest = pattern.partition(".")
    if not isinstance(cfg, DictConfig) or (head != "*" and head not in cfg):
        return
    keys = [k for k in cfg if fnmatch.fnmatchcase(str(k), head)] if "*" in head else [head]
    for key in keys:
        if OmegaConf.is_missing(cfg, key):
            continue
        value = cfg[key]
        if rest:
            for sub_key, sub_value in _matches(value, rest):
                yield f"{key}.{sub_key}", sub_value
        else:
            yield key, value


def validate(cfg: DictConfig) -> None:
    """Raise one `LmdiscError` naming the first option out of its range, with the range."""
    for rule in RULES:
        for key, value in _matches(cfg, rule.key):
            if value is None and rule.nullable:
                continue
            if not rule.check(value):
                raise LmdiscError(f"{key} must be {rule.allowed}, got {value!r}")
