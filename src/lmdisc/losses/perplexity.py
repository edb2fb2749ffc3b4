"""Perplexity of the batch as a loss term: exp(CE_batch), for `loss=ppl` and `loss=ppl_reg`.

d exp(CE)/dθ = exp(CE) · dCE/dθ: the term rescales the cross-entropy gradient by the batch
perplexity (so CE + α·PPL steps with (1 + α·PPL)·∇CE). Near initialisation PPL ≈ |V|, hence the
clamp on the exponent and the advice in the README to clip gradients or start warm.
"""

from __future__ import annotations

import math

import torch

from lmdisc.errors import LmdiscError

from .base import BatchContext, LossOutput

BASES = {"e": math.e, "2": 2.0}


class PerplexityLoss:
    """exp(mean token NLL of the batch), with the exponent clamped at `max_log_ppl`.

    The value is the same whatever `base`: base-2 perplexity 2^(H in bits) is exp(H in nats).
    `base` only picks the unit of the logged cross-entropy (bits for 2, nats for e). A clamped
    batch contributes no gradient through this term (so one bad batch cannot overflow).
    """

    needs_logits = False  # a function of the summed NLL: runs with a chunked cross-entropy too

    def __init__(self, base: str | int | float = "e", max_log_ppl: float = 20.0):
        key = str(base).rstrip("0").rstrip(".") if not isinstance(base, str) else base
        if key not in BASES:
            raise LmdiscError(f"loss base must be one of 2 or e, got {base!r}")
        if not max_log_ppl > 0:
            raise LmdiscError(f"max_log_ppl must be positive, got {max_log_ppl}")
        self.base = BASES[key]
        self.unit = "bits" if key == "2" else "nats"
        self.max_log_ppl = float(max_log_ppl)

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor, ctx: BatchContext) -> LossOutput:
        ce = ctx.nll_sum(logits, targets) / (targets != ctx.ignore_index).sum().clamp_min(1)
        value = torch.exp(torch.clamp(ce, max=self.max_log_ppl))
        logs = {f"cross_entropy_{self.unit}": (ce / math.log(self.base)).detach()}
        return LossOutput(value, logs)
