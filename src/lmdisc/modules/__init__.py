"""LightningModules."""

from .lm import LanguageModel

__all__ = ["LanguageModel"]
