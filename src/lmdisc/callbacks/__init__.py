"""Training callbacks."""

from .bounded_checkpoint import BoundedCheckpoint
from .nt_asgd import NTASGD

__all__ = ["NTASGD", "BoundedCheckpoint"]
