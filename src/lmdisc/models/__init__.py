"""LM architectures as plain nn.Modules (no Lightning): forward -> (logits, state, extras)."""

from .awd_lstm import AWDLSTM
from .base import LanguageModelBase, detach_state
from .lstm import LSTMLanguageModel
from .regularizers import LockedDropout, WeightDrop, embedding_dropout

__all__ = [
    "AWDLSTM",
    "LSTMLanguageModel",
    "LanguageModelBase",
    "LockedDropout",
    "WeightDrop",
    "detach_state",
    "embedding_dropout",
]
