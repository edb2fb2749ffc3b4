"""Cross-entropy with an explicit reduction, so published learning rates need no silent rescaling."""

from __future__ import annotations

import torch

from .base import BatchContext, LossOutput

REDUCTIONS = ("token_mean", "sum_over_time")


class CrossEntropyLoss:
    """`token_mean`: mean NLL over the window's tokens (AWD-LSTM, pytorch/examples).

    `sum_over_time`: NLL summed over the BPTT steps and averaged over the batch, as in Zaremba
    et al. and the TensorFlow PTB tutorial; with it their "lr 1, clip 5" can be used verbatim.
    """

    needs_logits = False  # a function of the summed NLL: runs with a chunked cross-entropy too

    def __init__(self, reduction: str = "token_mean"):
        if reduction not in REDUCTIONS:
            raise ValueError(f"unknown reduction {reduction!r}; choose one of {REDUCTIONS}")
        self.reduction = reduction

    def nll_weight(self, targets: torch.Tensor, ctx: BatchContext) -> float:
        """The factor this loss multiplies Σ NLL by (a chunked pass fused with the rkl term needs it
        before the backward)."""
        if self.reduction == "token_mean":
            return 1.0 / max(int((targets != ctx.ignore_index).sum()), 1)
        return 1.0 / targets.shape[0]

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor, ctx: BatchContext) -> LossOutput:
        summed = ctx.nll_sum(logits, targets)
        if self.reduction == "token_mean":
            loss = summed / (targets != ctx.ignore_index).sum().clamp_min(1)
        else:
            loss = summed / targets.shape[0]
        return LossOutput(loss)
