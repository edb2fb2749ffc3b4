"""Model FLOPs utilisation (MFU) of GPU training: achieved model FLOP/s over the device's peak.

FLOPs per trained token follow PaLM's count: 6 N for the matmul weights N (forward 2 N, backward
4 N) plus 12 L T d for attention's scores and weighted sums (L blocks, T the window, d the width);
N counts every matrix a token multiplies by, the output layer included (a tied embedding once, as
the output matmul), and not the embedding lookups. Frozen parameters count as trained ones: the
standard definition, which makes MFU comparable across fine-tuning modes. The peak is the dense
bf16 figure of the GPU's specification (989 TFLOP/s for H100 and H200 SXM), whatever the run's
precision; a GPU not in the table logs no MFU.
"""

from __future__ import annotations

import torch
from torch import nn

# dense bf16 tensor-core peak by device name (FLOP/s), from the vendors' specifications
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_FLOPS.items() if key in name), None)


def flops_per_token(model: nn.Module, window: int) -> float:
    """Training FLOPs per token of `model` (a LanguageModelBase) on windows of `window` tokens."""
    lookups = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    output = model.output_layer() if hasattr(model, "output_layer") else None
    if output is not None:
        lookups.discard(id(output[0]))  # a tied embedding is also the output matmul
    seen, matmul = set(), 0
    for param in model.parameters():
        if id(param) in seen or id(param) in lookups or param.ndim < 2:
            continue
        seen.add(id(param))
        matmul += param.numel()
    blocks = model.blocks() if hasattr(model, "blocks") else []
    attention = 12 * len(blocks) * window * getattr(model, "feature_size", 0) if blocks else 0
    return 6 * matmul + attention
