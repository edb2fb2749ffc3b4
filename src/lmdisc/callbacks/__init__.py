"""Training callbacks."""

from .nt_asgd import NTASGD

__all__ = ["NTASGD"]
