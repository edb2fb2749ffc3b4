"""Cross-entropy and the rKL term together, chunk by chunk from the features (`loss=rkl_disc` with
`ce_chunk_size`): no [B, T, V] tensor lives at once.

For each chunk of positions it forms the model's logits (features @ Wᵀ + b), their NLL and q, q_0's
logits for the same positions (q_0's features are computed once for the window; its output layer is
applied per chunk), the discriminator's s for them, the term Σ_v q (log q − log q_0 − s), and the
gradient of a·NLL + b·term with respect to the logits (a: the weight of the NLL sum in the loss, b:
that of the term's sum), which it turns into gradients for the features and the output layer right
away, as `chunked.py` does for the NLL alone. Per chunk it holds about three [chunk, V] fp32
buffers instead of the plain path's dozen [B, T, V] ones.

Knowing a and b in the forward is what makes one pass enough: the two sums have their own weights
in the loss, and keeping their gradients apart would cost two more [chunk, V] × [V, H] products per
chunk. The backward checks that the loss did weigh them so (both upstream gradients must be a·k and
b·k for one k) and refuses anything else.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lmdisc.data.window import IGNORE_INDEX

from .chunked import gradient_buffers


@dataclass
class FrozenChunks:
    """The frozen side of the term for one window, per chunk of flattened positions [start, stop):
    `logits` gives q_0's logits z_0 as a new fp32 tensor (overwritten in place), `scores` the
    discriminator's s (None for s ≡ 0; [n, V], possibly a stride-0 view of one [V] vector)."""

    logits: Callable[[int, int], torch.Tensor]
    scores: Callable[[int, int], torch.Tensor] | None = None


def _row_dot(q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Σ_v q s per row; s the same in every row (a frequency-class discriminator) is one matvec."""
    if s.dim() == 2 and s.stride(0) == 0:
        return q @ s[0]
    return (q * s).sum(-1)


class _ChunkedCEReverseKL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, frozen, chunk, nll_coef, term_coef, diag):
        rows = hidden.shape[0]
        grad_hidden, grad_weight, grad_bias = gradient_buffers(ctx, hidden, weight, bias)
        nll = torch.empty(rows, dtype=torch.float32, device=hidden.device)
        term = torch.empty(rows, dtype=torch.float32, device=hidden.device)
        # under autocast the gradient goes into both products in the autocast dtype: cast it once
        device = hidden.device.type
        matmul_dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
        weight_mm = weight.to(matmul_dtype)
        # the gradient is formed at the scale of the larger weight (1/count is tiny: fp16 would
        # flush it to zero), and the rest of the weights is applied in the backward
        norm = max(abs(nll_coef), abs(term_coef)) or 1.0
        for start in range(0, rows, chunk):
            stop = min(start + chunk, rows)
            h, t = hidden[start:stop], targets[start:stop]
            scored = t != IGNORE_INDEX
            safe = torch.where(scored, t, torch.zeros_like(t))
            log_q = F.linear(h.to(matmul_dtype), weight_mm, bias).float()
            lse = torch.logsumexp(log_q, dim=-1)
            nll[start:stop] = (lse - log_q.gather(1, safe.unsqueeze(1)).squeeze(1)) * scored
            log_q.sub_(lse.unsqueeze(1))
            z0 = frozen.logits(start, stop)
            lse0 = torch.logsumexp(z0, dim=-1)
            s = frozen.scores(start, stop) if frozen.scores is not None else None
            weights = scored.to(torch.float32)
            if diag is not None and "q0_sum" in diag:
                diag["q0_sum"] += weights @ (z0 - lse0.unsqueeze(1)).exp_()
            if s is not None:
                z0.add_(s)  # c = z_0 + s = log q_0 + s + lse0
            d = torch.sub(log_q, z0, out=z0)  # log q − c
            q = log_q.exp_()
            if diag is not None:
                if "q_sum" in diag:
                    diag["q_sum"] += weights @ q
                if s is not None:
                    diag["s_under_q"] += (_row_dot(q, s) * weights).sum()
            qd = d.mul_(q)
            t_rows = qd.sum(-1)  # Σ q d: the term minus lse0
            term[start:stop] = (t_rows + lse0) * scored
            if grad_hidden is None and grad_weight is None and grad_bias is None:
                continue
            # d(a·nll + b·term)/dz = a (q − onehot) + b q (d − Σ q d), zero on ignored positions
            a, b = (nll_coef / norm) * weights, (term_coef / norm) * weights
            grad = qd.mul_(b.unsqueeze(1)).addcmul_(q, (a - b * t_rows).unsqueeze(1))
            grad[torch.arange(stop - start, device=grad.device), safe] -= a
            grad = grad.to(matmul_dtype)
            if grad_hidden is not None:
                grad_hidden[start:stop] = grad @ weight_mm
            if grad_weight is not None:
                grad_weight += (grad.t() @ h.to(matmul_dtype)).float()
            if grad_bias is not None:
                grad_bias += grad.float().sum(0)
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        ctx.coefs, ctx.norm = (nll_coef, term_coef), norm
        ctx.mark_non_differentiable(nll, term)
        return nll.sum(), term.sum(), nll, term

    @staticmethod
    def backward(ctx, grad_nll, grad_term, _grad_nll_rows, _grad_term_rows):
        scale = _common_scale(float(grad_nll), float(grad_term), *ctx.coefs) * ctx.norm
        grads = [
            None if saved is None else (saved * scale).to(dtype)
            for saved, dtype in zip(ctx.saved_tensors, ctx.dtypes)
        ]
        return *grads, None, None, None, None, None, None


def _common_scale(grad_nll: float, grad_term: float, nll_coef: float, term_coef: float) -> float:
    """k with (grad_nll, grad_term) = k·(a, b): the gradients were formed for a·NLL + b·term."""
    scale = grad_nll / nll_coef if nll_coef else grad_term / term_coef if term_coef else 0.0
    for got, coef in ((grad_nll, nll_coef), (grad_term, term_coef)):
        if not math.isclose(got, scale * coef, rel_tol=1e-4, abs_tol=1e-30):
            raise RuntimeError(
                f"the chunked rkl loss formed its gradients for {nll_coef:.6g}·NLL + {term_coef:.6g}·term, but the "
                f"loss weighs them {grad_nll:.6g} and {grad_term:.6g}: use the sums only as CompositeLoss does"
            )
    return scale


def chunked_ce_reverse_kl(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    frozen: FrozenChunks,
    chunk: int,
    nll_coef: float,
    term_coef: float,
    diag: dict | None = None,
):
    """(Σ NLL, Σ term, per-position NLL, per-position term) over the scored targets of the logits
    `hidden @ weight.T + bias`, `chunk` positions at a time; the sums are differentiable, for a loss
    that weighs them `nll_coef` and `term_coef`. `diag` (or None) receives, summed over scored
    positions: `s_under_q` (Σ_v q s), and `q_sum`, `q0_sum` ([V]) when given as zero vectors."""
    shape = targets.shape
    total_nll, total_term, nll, term = _ChunkedCEReverseKL.apply(
        hidden.reshape(-1, hidden.shape[-1]),
        weight,
        bias,
        targets.reshape(-1),
        frozen,
        int(chunk),
        float(nll_coef),
        float(term_coef),
        diag,
    )
    return total_nll, total_term, nll.view(shape), term.view(shape)
