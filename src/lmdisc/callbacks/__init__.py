"""Training callbacks."""

from .bounded_checkpoint import BoundedCheckpoint
from .disc_refresh import DiscriminatorRefresh
from .nt_asgd import NTASGD
from .text_progress import TextProgressBar

__all__ = ["NTASGD", "BoundedCheckpoint", "DiscriminatorRefresh", "TextProgressBar"]
