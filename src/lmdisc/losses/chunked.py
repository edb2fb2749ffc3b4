"""Cross-entropy over a large vocabulary without all [B, T, V] logits alive at once.

The output layer and the NLL are computed together, `chunk` positions at a time. Each chunk's
gradient (softmax − one-hot, times the layer's input and weight) is formed right away, while its
logits exist, and only the gradients are kept for backward: a [V, H] matrix and an [N, H] one
instead of [N, V] logits, their log-softmax and its gradient. The FLOPs are those of the plain
path. A 49k-token vocabulary at 8 × 1024 positions is 1.6 GB of fp32 logits per copy; with
chunks of 1,024 positions it is 200 MB.

Valid for objectives that are a function of the summed NLL (cross-entropy, either reduction, and
the perplexity losses): the upstream gradient of the sum is one scalar, applied in backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmdisc.data.window import IGNORE_INDEX


def gradient_buffers(ctx, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
    """Where a chunked output layer accumulates the gradients backward will need (None where not):
    the features' (filled chunk by chunk), and the weight's and bias's (summed over chunks, fp32)."""
    need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
    grad_hidden = torch.empty_like(hidden) if need_hidden else None
    grad_weight = torch.zeros_like(weight, dtype=torch.float32) if need_weight else None
    grad_bias = torch.zeros_like(bias, dtype=torch.float32) if bias is not None and need_bias else None
    return grad_hidden, grad_weight, grad_bias


class _ChunkedLinearNLL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk: int):
        rows = hidden.shape[0]
        grad_hidden, grad_weight, grad_bias = gradient_buffers(ctx, hidden, weight, bias)
        nll = torch.empty(rows, dtype=torch.float32, device=hidden.device)
        for start in range(0, rows, chunk):
            stop = min(start + chunk, rows)
            h, t = hidden[start:stop], targets[start:stop]
            logits = F.linear(h, weight, bias).float()
            lse = torch.logsumexp(logits, dim=-1)
            scored = t != IGNORE_INDEX
            safe = torch.where(scored, t, torch.zeros_like(t))
            nll[start:stop] = (lse - logits.gather(1, safe.unsqueeze(1)).squeeze(1)) * scored
            if grad_hidden is None and grad_weight is None and grad_bias is None:
                continue
            grad = logits.sub_(lse.unsqueeze(1)).exp_()  # softmax, in place of the logits
            grad[torch.arange(stop - start, device=grad.device), safe] -= 1.0
            grad.mul_(scored.unsqueeze(1))
            if grad_hidden is not None:
                grad_hidden[start:stop] = grad.to(weight.dtype) @ weight
            if grad_weight is not None:
                grad_weight += grad.t().to(h.dtype) @ h
            if grad_bias is not None:
                grad_bias += grad.sum(0)
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        ctx.mark_non_differentiable(nll)
        return nll.sum(), nll

    @staticmethod
    def backward(ctx, grad_sum, _grad_nll):
        grads = []
        for saved, dtype in zip(ctx.saved_tensors, ctx.dtypes):
            grads.append(None if saved is None else (saved * grad_sum).to(dtype))
        return *grads, None, None


def chunked_nll(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor, chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of the NLL over scored targets, differentiable; per-target NLL [...], detached) of the
    logits `hidden @ weight.T + bias`, never holding more than `chunk` positions of logits."""
    shape = targets.shape
    total, per_token = _ChunkedLinearNLL.apply(
        hidden.reshape(-1, hidden.shape[-1]), weight, bias, targets.reshape(-1), chunk
    )
    return total, per_token.view(shape)
