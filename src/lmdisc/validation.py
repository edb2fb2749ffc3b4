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
    """Raise one `LmdiscError` naming the first option out of its range, with the range; then check
    the trainer against this machine (`check_trainer`)."""
    for rule in RULES:
        for key, value in _matches(cfg, rule.key):
            if value is None and rule.nullable:
                continue
            if not rule.check(value):
                raise LmdiscError(f"{key} must be {rule.allowed}, got {value!r}")
    if isinstance(cfg.get("trainer"), DictConfig):
        check_trainer(cfg.trainer, training="optim" in cfg)


# the precision group's four, plus what Lightning also accepts (its short forms, 16-true, 64-true)
PRECISIONS = (
    "32-true",
    "bf16-mixed",
    "bf16-true",
    "16-mixed",
    "16-true",
    "64-true",
    "32",
    "16",
    "bf16",
    "64",
)


def check_trainer(trainer: DictConfig, training: bool = True) -> None:
    """What this machine cannot run, refused before anything starts: fp16 autocast or more GPUs than
    there are; what runs but badly, warned: more CPU processes than cores, bf16-true training."""
    import os

    import torch

    precision = str(trainer.get("precision") or "32-true")
    if precision not in PRECISIONS:
        raise LmdiscError(f"trainer.precision must be one of {list(PRECISIONS)}, got {precision!r}")
    accelerator = str(trainer.get("accelerator") or "auto")
    gpus = torch.cuda.device_count()
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and gpus > 0)
    if precision in ("16-mixed", "16") and not on_gpu:
        raise LmdiscError(
            "precision=16-mixed (fp16 autocast with a loss scale) needs a GPU; on a CPU use precision=bf16-mixed"
        )
    devices = trainer.get("devices", 1)
    count = devices if _integer(devices) else len(devices) if isinstance(devices, (list, tuple)) else None
    if on_gpu and count is not None and count > gpus:
        raise LmdiscError(
            f"trainer.devices={devices} asks for {count} GPUs and this machine has {gpus}: "
            f"lower trainer.devices (or trainer.accelerator=cpu)"
        )
    if not on_gpu and count is not None and count > (os.cpu_count() or 1):
        _warn(
            f"trainer.devices={count} CPU processes on {os.cpu_count()} cores: they will share cores "
            "(fine for checking a multi-process run, slow for real training)"
        )
    if precision == "bf16-true" and training:
        _warn(
            "precision=bf16-true keeps no fp32 master weights: an update smaller than about 1/256 of a "
            "weight is lost. Train with bf16-mixed unless memory forces bf16-true"
        )


def _warn(message: str) -> None:
    from lightning.pytorch.utilities import rank_zero_warn

    rank_zero_warn(message)
