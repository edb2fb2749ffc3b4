"""AWD-LSTM (Merity, Keskar & Socher 2017): weight-dropped LSTM with variational dropouts and AR/TAR."""

from __future__ import annotations

import torch
from torch import nn

from .base import LanguageModelBase, State, run_recurrent
from .embedding import TokenEmbedding
from .regularizers import LockedDropout, WeightDrop, embedding_dropout


class AWDLSTM(LanguageModelBase):
    """Defaults are the paper's PTB model: 3 layers, 400 emb, 1150 hidden, tied weights.

    Dropouts: `dropout` on the last layer's output, `dropouth` between layers, `dropouti` on
    the embedded input, `dropoute` on embedding rows, `wdrop` on hidden-to-hidden weights.
    """

    def __init__(
        self,
        vocab_size: int,
        emb_size: int = 400,
        hidden_size: int = 1150,
        num_layers: int = 3,
        dropout: float = 0.4,
        dropouth: float = 0.3,
        dropouti: float = 0.65,
        dropoute: float = 0.1,
        wdrop: float = 0.5,
        tie_weights: bool = True,
        alpha: float = 2.0,
        beta: float = 1.0,
        init_range: float = 0.1,
        input_only_tokens: int = 0,
    ):
        super().__init__()
        self.vocab_size = vocab_size
        self.dropout, self.dropouth, self.dropouti, self.dropoute = dropout, dropouth, dropouti, dropoute
        self.alpha, self.beta = alpha, beta
        self.lockdrop = LockedDropout(dropout)
        self.embedding = TokenEmbedding(vocab_size, emb_size, input_only_tokens)
        out_last = emb_size if tie_weights else hidden_size
        sizes = [emb_size] + [hidden_size] * (num_layers - 1) + [out_last]
        self.rnns = nn.ModuleList(
            WeightDrop(nn.LSTM(sizes[i], sizes[i + 1], batch_first=True), ["weight_hh_l0"], wdrop)
            for i in range(num_layers)
        )
        self.decoder = nn.Linear(out_last, vocab_size)
        nn.init.uniform_(self.embedding.weight, -init_range, init_range)
        nn.init.zeros_(self.decoder.bias)
        if tie_weights:
            self.decoder.weight = self.embedding.weight
        else:
            nn.init.uniform_(self.decoder.weight, -init_range, init_range)

    @property
    def feature_size(self) -> int:
        return self.decoder.in_features

    def features(self, tokens: torch.Tensor, state: State = None):
        """The body's output before the decoder: (hidden[B,T,H], new_state, extras)."""
        x = embedding_dropout(self.embedding, tokens, self.dropoute if self.training else 0.0)
        x = self.lockdrop(x, self.dropouti)
        new_state = []
        for layer, rnn in enumerate(self.rnns):
            x, layer_state = run_recurrent(rnn, x, None if state is None else state[layer])
            new_state.append(layer_state)
            raw_output = x
            if layer != len(self.rnns) - 1:
                x = self.lockdrop(x, self.dropouth)
        output = self.lockdrop(x, self.dropout)
        extras = {"raw_output": raw_output, "dropped_output": output}
        return output, new_state, extras

    def shard_units(self) -> list[nn.Module]:
        """One FSDP unit per recurrent layer."""
        return list(self.rnns)

    def decode(self, features: torch.Tensor) -> torch.Tensor:
        return self.decoder(features)

    def output_layer(self):
        return self.decoder.weight, self.decoder.bias

    def parameter_groups(self) -> list[dict]:
        """AWD-LSTM's recipe decays every parameter (embeddings and biases included)."""
        return self.single_parameter_group()

    def regularization_loss(self, extras: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """AR (alpha * mean squared dropped output) + TAR (beta * mean squared step change)."""
        penalty = None
        if self.alpha:
            penalty = self.alpha * extras["dropped_output"].float().pow(2).mean()
        if self.beta and extras["raw_output"].shape[1] > 1:
            raw = extras["raw_output"].float()
            tar = self.beta * (raw[:, 1:] - raw[:, :-1]).pow(2).mean()
            penalty = tar if penalty is None else penalty + tar
        return penalty
