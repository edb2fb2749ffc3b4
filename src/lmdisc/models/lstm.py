"""Plain multi-layer LSTM language model (Zaremba et al. 2014; pytorch/examples word_language_model)."""

from __future__ import annotations

import torch
from torch import nn

from .base import LanguageModelBase, State, run_recurrent
from .embedding import TokenEmbedding


class LSTMLanguageModel(LanguageModelBase):
    """Embedding -> LSTM stack -> linear decoder, with dropout on every non-recurrent connection."""

    def __init__(
        self,
        vocab_size: int,
        emb_size: int = 200,
        hidden_size: int = 200,
        num_layers: int = 2,
        dropout: float = 0.0,
        tie_weights: bool = False,
        init_range: float = 0.1,
        input_only_tokens: int = 0,
    ):
        super().__init__()
        if tie_weights and emb_size != hidden_size:
            raise ValueError("tie_weights needs emb_size == hidden_size")
        self.vocab_size = vocab_size
        self.embedding = TokenEmbedding(vocab_size, emb_size, input_only_tokens)
        self.drop = nn.Dropout(dropout)
        self.rnn = nn.LSTM(
            emb_size, hidden_size, num_layers, dropout=dropout if num_layers > 1 else 0.0, batch_first=True
        )
        self.decoder = nn.Linear(hidden_size, vocab_size)
        for param in self.parameters():
            if param is not self.embedding.extra:  # input-only rows start at zero
                nn.init.uniform_(param, -init_range, init_range)
        if tie_weights:
            self.decoder.weight = self.embedding.weight

    @property
    def feature_size(self) -> int:
        return self.rnn.hidden_size

    def features(self, tokens: torch.Tensor, state: State = None):
        """The body's output before the decoder: (hidden[B,T,H], new_state, extras)."""
        hidden, state = run_recurrent(self.rnn, self.drop(self.embedding(tokens)), state)
        return self.drop(hidden), state, {}

    def decode(self, features: torch.Tensor) -> torch.Tensor:
        return self.decoder(features)

    def output_layer(self):
        return self.decoder.weight, self.decoder.bias

    def shard_units(self) -> list[nn.Module]:
        """The recurrent core (all its layers: one fused nn.LSTM) is one FSDP unit."""
        return [self.rnn]

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.decoder.parameters())

    def untie_output(self) -> dict:
        if self.decoder.weight is not self.embedding.weight:
            return {}
        self.decoder.weight = nn.Parameter(self.decoder.weight.detach().clone())
        return {"tie_weights": False}

    def parameter_groups(self) -> list[dict]:
        return self.single_parameter_group()
