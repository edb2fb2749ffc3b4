"""Metrics shared by training and evaluation."""

from .perplexity import TokenNLL
from .split import SplitMetrics
from .uncertainty import CalibrationError, PredictiveEntropy, token_entropy_bits

__all__ = [
    "CalibrationError",
    "PredictiveEntropy",
    "SplitMetrics",
    "TokenNLL",
    "token_entropy_bits",
]
