"""Fine-tuning a pretrained LM: which parameters train (`finetune.mode`), LoRA adapters, layer-wise
learning rates and gradual unfreezing."""

from .layers import LayerMap, layer_map, optimizer_groups
from .lora import attach_lora, lora_state, merge_lora
from .modes import MODES, FinetunePlan, plan_finetune

__all__ = [
    "MODES",
    "FinetunePlan",
    "LayerMap",
    "attach_lora",
    "layer_map",
    "lora_state",
    "merge_lora",
    "optimizer_groups",
    "plan_finetune",
]
