"""Training callbacks."""

from .bounded_checkpoint import BoundedCheckpoint
from .disc_refresh import DiscriminatorRefresh
from .gradual_unfreezing import GradualUnfreezing
from .nt_asgd import NTASGD
from .optuna_pruning import OptunaPruning
from .preemption import Preempted, SaveOnSignal
from .state_memory import StateMemory
from .text_progress import TextProgressBar
from .wandb_samples import WandbSamples

__all__ = [
    "NTASGD",
    "BoundedCheckpoint",
    "DiscriminatorRefresh",
    "GradualUnfreezing",
    "OptunaPruning",
    "Preempted",
    "SaveOnSignal",
    "StateMemory",
    "TextProgressBar",
    "WandbSamples",
]
