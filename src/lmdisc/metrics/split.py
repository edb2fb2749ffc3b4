"""All evaluation metrics of one split, fed from one log_softmax per window."""

from __future__ import annotations

import torch
from torch import nn

from lmdisc.data.window import IGNORE_INDEX, Window
from lmdisc.losses.base import at_least_fp32, gather_nll

from .perplexity import TokenNLL
from .uncertainty import CalibrationError, PredictiveEntropy


class SplitMetrics(nn.Module):
    """Token-weighted loss/perplexity, word-level perplexity, predictive entropy (bits) and top-1 ECE."""

    def __init__(self, ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.ignore_index = ignore_index
        self.nll = TokenNLL(ignore_index)
        self.entropy = PredictiveEntropy(ignore_index)
        self.ece = CalibrationError(ignore_index=ignore_index)

    def update(self, logits: torch.Tensor, window: Window) -> None:
        log_probs = torch.log_softmax(at_least_fp32(logits.detach()), dim=-1)
        targets = window.targets
        self.nll.update(gather_nll(log_probs, targets, self.ignore_index), targets, window.words)
        self.entropy.update(log_probs, targets)
        self.ece.update(log_probs, targets)

    def compute(self) -> dict[str, torch.Tensor]:
        loss = self.nll.compute()
        return {
            "loss": loss,
            "ppl": loss.exp(),
            "word_ppl": self.nll.word_loss().exp(),
            "entropy": self.entropy.compute(),
            "ece": self.ece.compute(),
        }

    def reset(self) -> None:
        for metric in (self.nll, self.entropy, self.ece):
            metric.reset()
