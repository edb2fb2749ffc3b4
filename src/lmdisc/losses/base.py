"""The loss interface: __call__(logits, targets, batch_ctx) -> LossOutput(loss, logs)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from lmdisc.data.window import IGNORE_INDEX

from .chunked import chunked_nll


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 logits up-cast to fp32 for softmax and divergences; fp32 and fp64 kept as they are
    (a 64-true run stays in fp64 end to end, so its numbers are reproducible across machines)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


@dataclass
class BatchContext:
    """What a loss may need beyond logits and targets (reference models read `inputs`).

    In chunked mode (`ce_chunk_size`) the step has no logits: `logits` is None and `features` with
    `output_layer` (weight, bias) stand in for them; only losses that need nothing but the summed
    NLL (`needs_logits = False`) run that way, and the rkl term, which CompositeLoss computes in the
    same chunked pass as the NLL (`ReverseKLLoss.chunked`).
    """

    inputs: torch.Tensor
    state: Any = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    ignore_index: int = IGNORE_INDEX
    # True for the first window of a stream: losses with their own recurrent models reset them
    first_window: bool = False
    # False on steps whose logs Lightning will not keep: losses may skip costly diagnostics
    diagnostics: bool = True
    features: torch.Tensor | None = None
    output_layer: tuple[torch.Tensor, torch.Tensor | None] | None = None
    chunk_size: int = 0
    _log_probs: torch.Tensor | None = field(default=None, repr=False)
    _log_probs_of: torch.Tensor | None = field(default=None, repr=False)
    _nll: torch.Tensor | None = field(default=None, repr=False)
    _nll_sum: torch.Tensor | None = field(default=None, repr=False)

    def log_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """log_softmax of `logits` in at least fp32, computed once per step however many terms ask for it."""
        if logits is None:
            raise RuntimeError("this loss needs the logits: it cannot run with a chunked cross-entropy")
        if self._log_probs_of is not logits:
            self._log_probs = torch.log_softmax(at_least_fp32(logits), dim=-1)
            self._log_probs_of = logits
            self._nll = self._nll_sum = None
        return self._log_probs

    def token_nll(self, logits: torch.Tensor | None, targets: torch.Tensor) -> torch.Tensor:
        """Per-token NLL [B, T]; 0 at ignored targets. Cached; detached in chunked mode."""
        if logits is None:
            self.nll_sum(None, targets)
        elif self._nll is None or self._log_probs_of is not logits:
            self._nll = gather_nll(self.log_probs(logits), targets, self.ignore_index)
        return self._nll

    def set_nll(self, total: torch.Tensor, per_token: torch.Tensor) -> None:
        """Hand over a chunked pass's (differentiable Σ NLL, detached per-token NLL), made together
        with another term (chunked_rkl.py), so the cross-entropy terms read it instead."""
        self._nll_sum, self._nll = total, per_token

    def nll_sum(self, logits: torch.Tensor | None, targets: torch.Tensor) -> torch.Tensor:
        """Σ NLL over the scored targets, differentiable: from the logits, or chunk by chunk from the
        features and the output layer when there are none."""
        if logits is not None:
            return self.token_nll(logits, targets).sum()
        if self._nll_sum is None:
            weight, bias = self.output_layer
            self._nll_sum, self._nll = chunked_nll(self.features, weight, bias, targets, self.chunk_size)
        return self._nll_sum


@dataclass
class LossOutput:
    loss: torch.Tensor
    logs: dict[str, torch.Tensor] = field(default_factory=dict)


class Loss(Protocol):
    def __call__(self, logits: torch.Tensor, targets: torch.Tensor, ctx: BatchContext) -> LossOutput: ...


def gather_nll(
    log_probs: torch.Tensor, targets: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    mask = targets != ignore_index
    safe = torch.where(mask, targets, torch.zeros_like(targets))
    nll = -log_probs.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    return nll * mask


def token_nll(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Per-token negative log-likelihood [B, T] in at least fp32 from log_softmax; 0 at ignored targets."""
    return gather_nll(torch.log_softmax(at_least_fp32(logits), dim=-1), targets, ignore_index)
