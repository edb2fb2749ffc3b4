"""What every LM nn.Module offers the training loop besides forward()."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

State = Any  # recurrent state: a tensor, a (nested) tuple/list of tensors, or None


def detach_state(state: State) -> State:
    """Cut the graph between BPTT windows while keeping the values (truncated BPTT)."""
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return state.detach()
    return type(state)(detach_state(s) for s in state)


def _to_float(state: State) -> State:
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return state.float()
    return type(state)(_to_float(s) for s in state)


def run_recurrent(rnn: nn.Module, x: torch.Tensor, state: State = None):
    """Call an LSTM (in fp32 when CPU autocast is on: the fused CPU kernel rejects bf16), output contiguous.

    Everything around the recurrent core (embedding, decoder, softmax) still runs in bf16.
    """
    if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            out, state = rnn(x.float(), _to_float(state))
    else:
        out, state = rnn(x, state)
    # without grad the CPU LSTM may return a strided view; a Linear on a non-contiguous 3-D input
    # runs as a batched matmul over a broadcast weight, several times slower than one matmul
    return out.contiguous(), state


class LanguageModelBase(nn.Module):
    """forward(tokens[B,T], state=None) -> (logits[B,T,V], new_state, extras).

    `features` returns the body's output before the decoder, so a discriminator can reuse (a
    copy of) the body as its context encoder.
    """

    vocab_size: int
    feature_size: int

    def features(self, tokens: torch.Tensor, state: State = None):
        raise NotImplementedError

    def decode(self, features: torch.Tensor) -> torch.Tensor:
        """Logits from `features()`' output (both our LMs end in a linear `decoder`)."""
        return self.decoder(features)

    def regularization_loss(self, extras: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Model-specific penalty added to the training loss (AWD's AR/TAR); none by default."""
        return None
