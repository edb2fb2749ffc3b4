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


class LanguageModelBase(nn.Module):
    """forward(tokens[B,T], state=None) -> (logits[B,T,V], new_state, extras)."""

    vocab_size: int

    def regularization_loss(self, extras: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Model-specific penalty added to the training loss (AWD's AR/TAR); none by default."""
        return None
