"""LoRA adapters through `peft`, on any of our models (a transformers model or our own GPT).

`peft.inject_adapter_in_model` adds the low-rank A·B next to each targeted Linear in place, so the
model keeps our interface (features, decode, blocks) and the LightningModule sees one module.
We do not use `get_peft_model`: its `PeftModel` wrapper hides that interface. Merging (for
evaluation and export) folds B·A·(alpha/r) into the base weight with peft's own `merge()` and
puts the base Linear back, which is what `merge_and_unload` does for a `PeftModel`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from lmdisc.errors import LmdiscError

ADAPTER_MARK = "lora_"


def linear_names(model: nn.Module) -> list[str]:
    """The last name part of every Linear inside the model's blocks (else anywhere): what
    `target_modules` may name."""
    scope = model.blocks() if hasattr(model, "blocks") and model.blocks() else [model]
    names = {
        name.rsplit(".", 1)[-1]
        for block in scope
        for name, m in block.named_modules()
        if name and isinstance(m, nn.Linear)
    }
    return sorted(names)


def attach_lora(model: nn.Module, options: Mapping) -> list[str]:
    """Add LoRA adapters (options: r, alpha, dropout, target_modules; null targets: every Linear
    of the blocks) to `model` in place; returns the target names. Only the adapters train."""
    from peft import LoraConfig, inject_adapter_in_model

    available = linear_names(model)
    targets = list(options.get("target_modules") or available)
    missing = sorted(set(targets) - set(available))
    if not available or missing:
        raise LmdiscError(
            f"finetune.lora.target_modules names {missing or targets}, which {type(model).__name__} does not "
            f"have; its Linear modules are {available}"
        )
    r, alpha, dropout = options.get("r", 8), options.get("alpha", 16), options.get("dropout", 0.0)
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise LmdiscError(f"finetune.lora.r must be a whole number >= 1, got {r!r}")
    if not 0 <= float(dropout) < 1:
        raise LmdiscError(f"finetune.lora.dropout must be in [0, 1), got {dropout!r}")
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=float(dropout), target_modules=targets)
    inject_adapter_in_model(config, model)
    for name, param in model.named_parameters():
        param.requires_grad_(ADAPTER_MARK in name)
    return targets


def lora_state(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The adapters' entries of a state dict (what a LoRA checkpoint stores)."""
    return {k: v for k, v in state_dict.items() if ADAPTER_MARK in k}


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and put the plain Linear back (in place)."""
    from peft.tuners.lora import LoraLayer

    replacements = [(name, m) for name, m in model.named_modules() if isinstance(m, LoraLayer)]
    for name, layer in replacements:
        layer.merge()
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer.get_base_layer())
    return model
