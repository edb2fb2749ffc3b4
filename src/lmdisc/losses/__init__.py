"""Training objectives, all with the same interface (see `base.Loss`)."""

from .base import BatchContext, Loss, LossOutput, token_nll
from .composite import CompositeLoss
from .cross_entropy import CrossEntropyLoss
from .discriminator import discriminator_bce, discriminator_stats
from .perplexity import PerplexityLoss
from .reverse_kl import ReverseKLLoss, reverse_kl_terms

__all__ = [
    "BatchContext",
    "CompositeLoss",
    "CrossEntropyLoss",
    "Loss",
    "LossOutput",
    "PerplexityLoss",
    "ReverseKLLoss",
    "discriminator_bce",
    "discriminator_stats",
    "reverse_kl_terms",
    "token_nll",
]
