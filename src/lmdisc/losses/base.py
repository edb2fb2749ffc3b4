"""The loss interface: __call__(logits, targets, batch_ctx) -> LossOutput(loss, logs)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from lmdisc.data.batching import IGNORE_INDEX


@dataclass
class BatchContext:
    """What a loss may need beyond logits and targets (reference models read `inputs`/`state`)."""

    inputs: torch.Tensor
    state: Any = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    ignore_index: int = IGNORE_INDEX
    # True for the first window of a stream: losses with their own recurrent models reset them
    first_window: bool = False
    # False on steps whose logs Lightning will not keep: losses may skip costly diagnostics
    diagnostics: bool = True
    _log_probs: torch.Tensor | None = field(default=None, repr=False)
    _log_probs_of: torch.Tensor | None = field(default=None, repr=False)
    _nll: torch.Tensor | None = field(default=None, repr=False)

    def log_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """log_softmax of `logits` in at least fp32, computed once per step however many terms ask for it."""
        if self._log_probs_of is not logits:
            self._log_probs = torch.log_softmax(at_least_fp32(logits), dim=-1)
            self._log_probs_of = logits
        return self._log_probs

    def token_nll(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-token NLL [B, T] from the shared log-probs; 0 at ignored targets. Cached too."""
        if self._nll is None or self._log_probs_of is not logits:
            self._nll = gather_nll(self.log_probs(logits), targets, self.ignore_index)
        return self._nll


@dataclass
class LossOutput:
    loss: torch.Tensor
    logs: dict[str, torch.Tensor] = field(default_factory=dict)


class Loss(Protocol):
    def __call__(self, logits: torch.Tensor, targets: torch.Tensor, ctx: BatchContext) -> LossOutput: ...


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 logits up-cast to fp32 for softmax and divergences; fp32 and fp64 kept as they are
    (a 64-true run stays in fp64 end to end, so its numbers are reproducible across machines)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


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
