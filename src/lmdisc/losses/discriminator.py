"""The discriminator's objective and diagnostics (DESIGN.md §4).

D(c, w) = σ(s(c)_w), positives = the true next word, negatives = words drawn from q_0(·|c).
At the optimum D* = p / (p + q_0), i.e. s* = log p − log q_0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NEGATIVES = ("exact", "sampled")


def discriminator_bce(
    s: torch.Tensor,
    targets: torch.Tensor,
    log_q0: torch.Tensor,
    mask: torch.Tensor,
    negatives: str = "exact",
    k: int = 1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Mean over positions of −log σ(s_w) − E_{v~q0}[log σ(−s_v)].

    `exact` takes the expectation in closed form over the whole vocabulary; `sampled` draws
    `k` negatives per position from q_0 (an unbiased estimate of the same loss).
    """
    if negatives not in NEGATIVES:
        raise ValueError(f"negatives must be one of {NEGATIVES}, got {negatives!r}")
    safe = torch.where(mask, targets, torch.zeros_like(targets))
    positive = -F.logsigmoid(s.gather(-1, safe.unsqueeze(-1)).squeeze(-1))
    if negatives == "exact":
        negative = -(log_q0.exp() * F.logsigmoid(-s)).sum(-1)
    else:
        flat = log_q0.exp().reshape(-1, log_q0.shape[-1])
        samples = torch.multinomial(flat, k, replacement=True, generator=generator).view(*s.shape[:-1], k)
        negative = -F.logsigmoid(-s.gather(-1, samples)).mean(-1)
    return ((positive + negative) * mask).sum() / mask.sum().clamp_min(1)


@torch.no_grad()
def discriminator_stats(
    s: torch.Tensor, targets: torch.Tensor, log_q0: torch.Tensor, mask: torch.Tensor
) -> dict:
    """Sums over positions (divide by `positions`) of exact-under-q_0 diagnostics.

    - `bce`: the exact objective (2·ln 2 for the zero head);
    - `acc`: ½·(1[s_w > 0] + Σ_v q_0(v) 1[s_v < 0]), positives and q_0-negatives weighted alike;
    - `auc`: P(s_w > s_v), v ~ q_0(·|c), ties counted ½ (per context, then averaged);
    - `kl_q0_p`: Σ_v q_0(v)(−s_v), the estimate of KL(q_0‖p) (exact when s = log p − log q_0).
    """
    q0 = log_q0.exp()
    safe = torch.where(mask, targets, torch.zeros_like(targets))
    s_pos = s.gather(-1, safe.unsqueeze(-1))
    m = mask.double()
    bce = -F.logsigmoid(s_pos.squeeze(-1)) - (q0 * F.logsigmoid(-s)).sum(-1)
    acc = 0.5 * ((s_pos.squeeze(-1) > 0).double() + (q0 * (s < 0)).sum(-1).double())
    auc = (q0 * ((s_pos > s).float() + 0.5 * (s_pos == s).float())).sum(-1)
    kl = (q0 * -s).sum(-1)
    return {
        "bce": (bce.double() * m).sum(),
        "acc": (acc * m).sum(),
        "auc": (auc.double() * m).sum(),
        "kl_q0_p": (kl.double() * m).sum(),
        "positions": m.sum(),
    }
