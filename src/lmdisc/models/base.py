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


# Device types whose LSTM recurrent core stays in fp32 under bf16 autocast; elsewhere autocast runs it
# in bf16. None by default: benchmarks/lstm_core.py timed whole training steps on a 2-core AMD EPYC
# with the bf16 core 1.01-1.10x faster than the fp32 one (README, "The LSTM's recurrent core in
# bf16"); the benchmark adds "cpu" here to time the fp32 core.
FP32_CORE_DEVICES: set[str] = set()


def run_recurrent(rnn: nn.Module, x: torch.Tensor, state: State = None):
    """Call an LSTM, its core in fp32 under autocast on `FP32_CORE_DEVICES`, output contiguous.

    Everything around the recurrent core (embedding, decoder, softmax) still runs in the autocast dtype.
    """
    if x.device.type in FP32_CORE_DEVICES and torch.is_autocast_enabled(x.device.type):
        with torch.autocast(x.device.type, enabled=False):
            out, state = rnn(x.float(), _to_float(state))
    else:
        out, state = rnn(x, state)
    # without grad the CPU LSTM may return a strided view; a Linear on a non-contiguous 3-D input
    # runs as a batched matmul over a broadcast weight, several times slower than one matmul
    return out.contiguous(), state


class LanguageModelBase(nn.Module):
    """forward(tokens[B,T], state=None) -> (logits[B,T,V], new_state, extras).

    `features` returns the body's output before the output layer and `decode` maps it to logits,
    so a discriminator can reuse (a copy of) the body as its context encoder. `carries_state`
    says whether `state` means anything (recurrent models) or is always None (transformers);
    `max_positions` bounds a window's length where the model has one.
    """

    vocab_size: int
    feature_size: int
    carries_state: bool = True
    max_positions: int | None = None

    def features(self, tokens: torch.Tensor, state: State = None):
        raise NotImplementedError

    def decode(self, features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, tokens: torch.Tensor, state: State = None):
        hidden, state, extras = self.features(tokens, state)
        return self.decode(hidden), state, extras

    def output_layer(self) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """(weight [V, H], bias [V] or None) when `decode(h) == h @ weight.T + bias`, which lets the
        cross-entropy be computed in chunks without all logits at once; None otherwise."""
        return None

    def blocks(self) -> list[nn.Module]:
        """The model's stacked layers, input side first (a transformer's blocks), for fine-tuning the
        last n, layer-wise learning rates, gradual unfreezing and reading a layer's features; a
        model without such a stack (an LSTM) returns []."""
        return []

    def shard_units(self) -> list[nn.Module]:
        """The submodules FSDP shards one by one (trainer=fsdp), each called in the model's forward; the
        model's own unit holds the rest (embedding and output layer together). Blocks by default."""
        return self.blocks()

    def head_parameters(self) -> list[nn.Parameter]:
        """The output layer's parameters and any norm between the last block and it (the "head" that
        `finetune.mode=head` trains); [] when the model does not say."""
        return []

    def untie_output(self) -> dict:
        """Give the output layer its own copy of a weight it shares with the input embedding, so the
        head trains alone; returns the model-config changes that rebuild it untied ({} if it was not
        tied). Models that cannot untie refuse."""
        from lmdisc.errors import LmdiscError

        raise LmdiscError(f"{type(self).__name__} cannot untie its output layer from its embedding")

    def parameter_groups(self) -> list[dict]:
        """Decay (matrices of linear maps) and no-decay (biases, norms, embeddings) parameter groups
        for the optimiser; the no-decay group sets weight_decay 0, the other keeps the optimiser's."""
        embeddings = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)}
        embeddings |= {id(m.extra) for m in self.modules() if getattr(m, "extra", None) is not None}
        decay, no_decay, seen = [], [], set()
        for param in self.parameters():
            if id(param) in seen or not param.requires_grad:
                continue
            seen.add(id(param))
            (decay if param.ndim >= 2 and id(param) not in embeddings else no_decay).append(param)
        groups = [
            {"params": decay, "group": "decay"},
            {"params": no_decay, "weight_decay": 0.0, "group": "no_decay"},
        ]
        return [g for g in groups if g["params"]]

    def single_parameter_group(self) -> list[dict]:
        """Every parameter in one group, in the model's order: for recipes that decay all parameters
        (AWD-LSTM) or none (Zaremba et al.), whose numbers must not depend on grouping."""
        return [{"params": [p for p in self.parameters() if p.requires_grad], "group": "all"}]

    def regularization_loss(self, extras: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Model-specific penalty added to the training loss (AWD's AR/TAR); none by default."""
        return None
