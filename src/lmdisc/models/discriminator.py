"""Discriminator s_φ(c) ∈ R^|V|: a context encoder and a zero-initialised linear head.

D(c, w) = σ(s(c)_w) tells true next words from words of the frozen LM q_0; its optimum is
s* = log p − log q_0 (DESIGN.md §4). The head starts at zero, so D = 1/2 and the KL estimate
starts at 0. Encoders:
- `LSTMEncoder`: its own embedding + LSTM (size of your choice);
- `LMBodyEncoder(trainable=True)`: a copy of the LM body, warm-started from the LM;
- `LMBodyEncoder(trainable=False)`: the frozen LM's features (optionally followed by an MLP in
  the discriminator), the fewest trainable parameters of the contextual ones.
`FrequencyClassDiscriminator` has no encoder: one logit per training-frequency class of the
next word, the same in every context, so it can only learn how q_0 mis-weights whole classes
(rare words, say), but it learns that from little held-out text without over-fitting.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .base import LanguageModelBase, State, run_recurrent
from .embedding import TokenEmbedding


class LSTMEncoder(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        emb_size: int = 200,
        hidden_size: int = 200,
        num_layers: int = 1,
        dropout: float = 0.0,
        input_only_tokens: int = 0,
    ):
        super().__init__()
        self.embedding = TokenEmbedding(vocab_size, emb_size, input_only_tokens)
        self.rnn = nn.LSTM(
            emb_size, hidden_size, num_layers, batch_first=True, dropout=dropout if num_layers > 1 else 0.0
        )
        self.drop = nn.Dropout(dropout)
        self.feature_size = hidden_size
        self.carries_state = True

    def forward(self, tokens: torch.Tensor, state: State = None):
        hidden, state = run_recurrent(self.rnn, self.drop(self.embedding(tokens)), state)
        return self.drop(hidden), state


class LMBodyEncoder(nn.Module):
    """The features of a language model's body (its `features()`), trainable copy or frozen; works
    for any model of ours (an LSTM's state is carried, a transformer's is None)."""

    def __init__(self, lm: LanguageModelBase, trainable: bool = True):
        super().__init__()
        self.body = copy.deepcopy(lm)
        self.trainable = trainable
        self.feature_size = lm.feature_size
        self.carries_state = getattr(lm, "carries_state", True)
        if not trainable:
            self.body.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if not self.trainable:
            self.body.eval()  # frozen features: no dropout, whatever the discriminator's mode
        return self

    def forward(self, tokens: torch.Tensor, state: State = None):
        if self.trainable:
            hidden, state, _ = self.body.features(tokens, state)
            return hidden, state
        with torch.no_grad():
            hidden, state, _ = self.body.features(tokens, state)
        return hidden, state


class Discriminator(nn.Module):
    """forward(tokens, state) -> (s[B,T,V], new_state, {}): the same interface as an LM."""

    def __init__(self, encoder: nn.Module, vocab_size: int, mlp_size: int = 0, dropout: float = 0.0):
        super().__init__()
        self.encoder = encoder
        self.vocab_size = vocab_size
        self.carries_state = encoder.carries_state
        size = encoder.feature_size
        layers: list[nn.Module] = [nn.Dropout(dropout)]
        if mlp_size:
            layers += [nn.Linear(size, mlp_size), nn.Tanh(), nn.Dropout(dropout)]
            size = mlp_size
        self.mlp = nn.Sequential(*layers)
        self.head = nn.Linear(size, vocab_size)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        """s from the encoder's features (lets rkl_disc reuse q_0's features for `lm_frozen`)."""
        return self.head(self.mlp(features))

    def add_scores_(self, out: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """out += s(features) in fp32 without materialising s: the head's matmul accumulates into
        `out` (rkl_disc adds s to q_0's logits this way)."""
        hidden = self.mlp(features).float()
        out.view(-1, out.shape[-1]).addmm_(hidden.reshape(-1, hidden.shape[-1]), self.head.weight.float().t())
        return out.add_(self.head.bias.float())

    def forward(self, tokens: torch.Tensor, state: State = None):
        features, state = self.encoder(tokens, state)
        return self.scores(features), state, {}

    def shares_body_with(self, lm: nn.Module) -> bool:
        """True when the encoder is a frozen copy of `lm`'s body with the very same weights."""
        if not isinstance(self.encoder, LMBodyEncoder) or self.encoder.trainable:
            return False
        mine, theirs = self.encoder.body.state_dict(), lm.state_dict()
        return mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


class FrequencyClassDiscriminator(nn.Module):
    """s(c)_v = β[class(v)], class(v) = the training-frequency class of word v (a buffer, saved).

    At the optimum β_k = log(N_k / M_k): how many held-out next words fall in class k, over how
    much probability q_0 puts on class k. The same interface as `Discriminator`.
    """

    encoder = None  # no context encoder, so nothing to follow when q_0 is refreshed
    carries_state = False

    def __init__(self, word_class: torch.Tensor):
        super().__init__()
        self.vocab_size = word_class.numel()
        self.register_buffer("word_class", word_class.long().clone())
        self.class_logit = nn.Parameter(torch.zeros(int(word_class.max()) + 1))

    def forward(self, tokens: torch.Tensor, state: State = None):
        s = self.class_logit[self.word_class]
        return s.expand(*tokens.shape, self.vocab_size), state, {}

    def shares_body_with(self, lm: nn.Module) -> bool:
        return False


ENCODERS = ("lstm", "lm_copy", "lm_frozen", "freq_class")


def build_discriminator(
    encoder: str,
    vocab_size: int,
    lm: LanguageModelBase | None = None,
    mlp_size: int = 0,
    dropout: float = 0.0,
    lstm: dict | None = None,
    word_class: torch.Tensor | None = None,
    input_only_tokens: int = 0,
) -> Discriminator | FrequencyClassDiscriminator:
    """The discriminator named by `discriminator.encoder` (see the module docstring);
    `freq_class` needs `word_class`, each predicted id's training-frequency class."""
    if encoder == "freq_class":
        if word_class is None or word_class.numel() != vocab_size:
            raise ValueError(
                f"encoder 'freq_class' needs the frequency class of each of the {vocab_size} words"
            )
        return FrequencyClassDiscriminator(word_class)
    if encoder == "lstm":
        enc = LSTMEncoder(vocab_size, **(lstm or {}), input_only_tokens=input_only_tokens)
    elif encoder in ("lm_copy", "lm_frozen"):
        if lm is None:
            raise ValueError(f"encoder {encoder!r} needs the language model")
        enc = LMBodyEncoder(lm, trainable=encoder == "lm_copy")
    else:
        raise ValueError(f"unknown discriminator encoder {encoder!r}; choose one of {ENCODERS}")
    return Discriminator(enc, vocab_size, mlp_size, dropout)
