"""Training objectives, all with the same interface (see `base.Loss`)."""

from .base import BatchContext, Loss, LossOutput, token_nll
from .composite import CompositeLoss
from .cross_entropy import CrossEntropyLoss
from .perplexity import PerplexityLoss

__all__ = [
    "BatchContext",
    "CompositeLoss",
    "CrossEntropyLoss",
    "Loss",
    "LossOutput",
    "PerplexityLoss",
    "token_nll",
]
