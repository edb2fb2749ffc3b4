"""`finetune.mode`: which parameters of a pretrained LM train.

- `full`: all of them.
- `head`: only the head (the output layer, untied from the embedding if it was tied, and the norm
  before it): a frozen body read as a feature extractor, with a new head on top.
- `last_n`: the last `finetune.n` blocks and the head.
- `lora`: only LoRA adapters (`finetune.lora`); checkpoints then hold the adapters alone.

Frozen parameters get `requires_grad=False`, so they have no gradient, stay out of the optimiser
(and of weight decay) and are bitwise unchanged by a step.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from torch import nn

from lmdisc.errors import LmdiscError

from .layers import LayerMap, layer_map
from .lora import attach_lora

MODES = ("full", "head", "last_n", "lora")


@dataclass
class FinetunePlan:
    mode: str
    trainable: int  # parameters (elements) that train
    total: int
    layers: LayerMap
    trainable_ids: set[int] = field(default_factory=set)
    config_changes: dict = field(default_factory=dict)  # model config keys that rebuild it (untied head)
    meta: dict = field(default_factory=dict)  # stored in checkpoints as lmdisc.finetune (primitives)
    unfreeze_every_n_epochs: int = 0

    @property
    def adapters_only(self) -> bool:
        return self.mode == "lora"

    def describe(self) -> str:
        share = 100.0 * self.trainable / max(self.total, 1)
        return (
            f"finetune.mode={self.mode}: {self.trainable:,} of {self.total:,} parameters train ({share:.2f}%)"
        )


def _output_tied(model: nn.Module) -> bool:
    """Whether the output layer's weight is an input embedding's."""
    layer = model.output_layer() if hasattr(model, "output_layer") else None
    if layer is None:
        return False
    return any(m.weight is layer[0] for m in model.modules() if isinstance(m, nn.Embedding))


def _count(params) -> int:
    return sum(p.numel() for p in {id(p): p for p in params}.values())


def plan_finetune(
    model: nn.Module, options: Mapping | None, pretrained: bool, base: Mapping | None = None
) -> FinetunePlan:
    """Freeze what `options.mode` does not train (untying the head where it must), attach LoRA
    adapters for `lora`; `base` says where the pretrained weights came from (a LoRA checkpoint
    rebuilds from it)."""
    options = dict(options or {})
    mode = options.get("mode", "full")
    if mode not in MODES:
        raise LmdiscError(f"finetune.mode must be one of {list(MODES)}, got {mode!r}")
    every = options.get("unfreeze_every_n_epochs") or 0
    if isinstance(every, bool) or not isinstance(every, int) or every < 0:
        raise LmdiscError(f"finetune.unfreeze_every_n_epochs must be a whole number >= 0, got {every!r}")
    if mode != "full" and not pretrained:
        raise LmdiscError(
            f"finetune.mode={mode} trains part of a pretrained model, but this one starts from random "
            "weights: pass init_from=CKPT (or a pretrained model=hf / smollm2_135m), or use finetune.mode=full"
        )
    if mode == "lora" and every:
        raise LmdiscError(
            "finetune.unfreeze_every_n_epochs thaws layers; with finetune.mode=lora only adapters train"
        )
    changes: dict = {}
    meta: dict = {"mode": mode}
    if (mode in ("head", "last_n") or every) and _output_tied(model):
        changes = model.untie_output()
        meta["untied_head"] = True  # a run that starts from this checkpoint unties its model too
    if mode == "lora":
        targets = attach_lora(model, options.get("lora") or {})
        lora = dict(options.get("lora") or {})
        meta.update(lora={**lora, "target_modules": targets}, base=dict(base or {}))
    else:
        model.requires_grad_(mode == "full")
        if mode in ("head", "last_n"):
            head = model.head_parameters()
            if not head:
                raise LmdiscError(
                    f"{type(model).__name__} does not name its head: finetune.mode={mode} cannot be used"
                )
            trained = list(head)
            if mode == "last_n":
                blocks = model.blocks()
                n = options.get("n")
                if not blocks:
                    raise LmdiscError(
                        f"finetune.mode=last_n needs a model with blocks; {type(model).__name__} has none"
                    )
                if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(blocks):
                    raise LmdiscError(
                        f"finetune.n must be a whole number in 1..{len(blocks)} (the model's depth), got {n!r}"
                    )
                meta["n"] = n
                trained += [p for block in blocks[-n:] for p in block.parameters()]
            for param in trained:
                param.requires_grad_(True)
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    return FinetunePlan(
        mode=mode,
        trainable=_count(trainable),
        total=_count(params),
        layers=layer_map(model),
        trainable_ids={id(p) for p in trainable},
        config_changes=changes,
        meta=meta,
        unfreeze_every_n_epochs=every,
    )
