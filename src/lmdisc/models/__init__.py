"""LM architectures as plain nn.Modules (no Lightning): forward -> (logits, state, extras)."""

from .awd_lstm import AWDLSTM
from .base import LanguageModelBase, detach_state
from .build import build_lm
from .embedding import TokenEmbedding
from .gpt import GPT, GPTConfig
from .hf import HFCausalLM
from .lstm import LSTMLanguageModel
from .regularizers import LockedDropout, WeightDrop, embedding_dropout

__all__ = [
    "AWDLSTM",
    "GPT",
    "GPTConfig",
    "HFCausalLM",
    "LSTMLanguageModel",
    "LanguageModelBase",
    "LockedDropout",
    "TokenEmbedding",
    "WeightDrop",
    "build_lm",
    "detach_state",
    "embedding_dropout",
]
