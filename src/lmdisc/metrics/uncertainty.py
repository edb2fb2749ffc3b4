"""How sure the model is (predictive entropy) and whether that confidence is earned (ECE)."""

from __future__ import annotations

import math

import torch

from lmdisc.data.window import IGNORE_INDEX

from .exact_states import ExactStateMetric


def token_entropy_bits(log_probs: torch.Tensor) -> torch.Tensor:
    """Entropy of each next-token distribution [B, T] in bits, from fp32 log-probs."""
    return torch.special.entr(log_probs.exp()).sum(-1) / math.log(2)  # entr: 0 where p = 0


class PredictiveEntropy(ExactStateMetric):
    """Mean entropy (bits/token) of the predicted next-token distributions over scored tokens."""

    full_state_update = False

    def __init__(self, ignore_index: int = IGNORE_INDEX, **kwargs):
        super().__init__(**kwargs)
        self.ignore_index = ignore_index
        self.add_state("entropy_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("tokens", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, log_probs: torch.Tensor, targets: torch.Tensor) -> None:
        mask = targets != self.ignore_index
        self.entropy_sum += (token_entropy_bits(log_probs.detach()) * mask).double().sum()
        self.tokens += mask.sum()

    def compute(self) -> torch.Tensor:
        return self.entropy_sum / self.tokens.clamp_min(1)


class CalibrationError(ExactStateMetric):
    """Expected calibration error of the top-1 next-token prediction (equal-width bins, L1).

    ECE = sum_b (n_b / N) |accuracy_b - confidence_b|, confidence = the top probability.
    """

    full_state_update = False

    def __init__(self, n_bins: int = 15, ignore_index: int = IGNORE_INDEX, **kwargs):
        super().__init__(**kwargs)
        self.n_bins = n_bins
        self.ignore_index = ignore_index
        zeros = torch.zeros(n_bins, dtype=torch.float64)
        self.add_state("confidence_sum", zeros.clone(), dist_reduce_fx="sum")
        self.add_state("correct_sum", zeros.clone(), dist_reduce_fx="sum")
        self.add_state("count", zeros.clone(), dist_reduce_fx="sum")

    def update(self, log_probs: torch.Tensor, targets: torch.Tensor) -> None:
        mask = targets != self.ignore_index
        top_log_prob, prediction = log_probs.detach().max(-1)
        confidence = top_log_prob.exp()[mask].double()
        correct = (prediction == targets)[mask].double()
        # a NaN confidence (a diverged model) falls in the first bin and makes the ECE NaN, honestly
        bins = torch.nan_to_num(confidence * self.n_bins, nan=0.0).long().clamp(0, self.n_bins - 1)
        self.confidence_sum.index_add_(0, bins, confidence)
        self.correct_sum.index_add_(0, bins, correct)
        self.count.index_add_(0, bins, torch.ones_like(confidence))

    def compute(self) -> torch.Tensor:
        total = self.count.sum().clamp_min(1)
        return (self.correct_sum - self.confidence_sum).abs().sum() / total
