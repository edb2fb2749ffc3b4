"""Metrics shared by training and evaluation."""

from .perplexity import TokenNLL, perplexity

__all__ = ["TokenNLL", "perplexity"]
