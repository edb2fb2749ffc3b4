"""The rKL term under bf16: its softmax and divergence run in fp32, so its gradient keeps only the
rounding of bf16 logits, not the several percent a divergence computed in bf16 loses."""

import copy

import torch
from torch import nn

from lmdisc.losses import BatchContext, ReverseKLLoss
from lmdisc.losses.reverse_kl import reverse_kl_terms
from lmdisc.models import GPT

V = 2000


class Fixed(nn.Module):
    """The same output at every position (q_0's logits, or the discriminator's s)."""

    def __init__(self, row: torch.Tensor):
        super().__init__()
        self.register_buffer("row", row)
        self.anchor = nn.Parameter(torch.zeros(()))
        self.vocab_size = row.numel()

    def forward(self, tokens, state=None):
        return self.row.expand(*tokens.shape, -1).clone(), None, {}


def _relative_error(grad: torch.Tensor, reference: torch.Tensor) -> float:
    return float((grad.double() - reference).norm() / reference.norm())


def test_rkl_gradient_of_bf16_logits_is_exact_up_to_their_rounding():
    generator = torch.Generator().manual_seed(0)
    z0 = torch.randn(V, generator=generator) * 3
    s = torch.randn(V, generator=generator) * 0.1
    logits = (z0 + torch.randn(V, generator=generator) * 0.05).expand(2, 5, V).bfloat16().requires_grad_()
    inputs, targets = torch.zeros(2, 5, dtype=torch.long), torch.randint(0, V, (2, 5), generator=generator)
    ReverseKLLoss(Fixed(z0), Fixed(s))(
        logits, targets, BatchContext(inputs, first_window=True)
    ).loss.backward()
    # the fp64 reference, from the very same (bf16-valued) logits
    exact = logits.detach().double().requires_grad_()
    mask = torch.ones(2, 5, dtype=torch.bool)
    log_q0 = torch.log_softmax(z0.double(), -1).expand(2, 5, V)
    reverse_kl_terms(torch.log_softmax(exact, -1), log_q0, s.double().expand(2, 5, V), mask).mean().backward()
    assert _relative_error(logits.grad, exact.grad) < 0.01
    # the same divergence computed in bf16 loses several percent: what the fp32 path avoids
    naive = logits.detach().clone().requires_grad_()
    bf16_q0 = torch.log_softmax(z0.bfloat16(), -1)
    reverse_kl_terms(torch.log_softmax(naive, -1), bf16_q0, s.bfloat16(), mask).mean().backward()
    assert _relative_error(naive.grad, exact.grad) > 0.03


def test_rkl_fine_tuning_gradients_under_bf16_autocast_follow_fp32():
    torch.manual_seed(0)
    model = GPT(vocab_size=300, block_size=16, n_layer=2, n_head=2, n_embd=64, dropout=0.0)
    q0 = copy.deepcopy(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)  # fine-tuning has moved away from q_0
    tokens = torch.randint(0, 300, (4, 16), generator=torch.Generator().manual_seed(1))
    grads = {}
    for precision in ("fp32", "bf16"):
        model.zero_grad()
        loss = ReverseKLLoss(q0)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits, _, _ = model(tokens)
            term = loss(logits, tokens.roll(-1, 1), BatchContext(tokens, first_window=True)).loss
        term.backward()
        grads[precision] = torch.cat([p.grad.flatten() for p in model.parameters()])
    cosine = torch.nn.functional.cosine_similarity(grads["fp32"], grads["bf16"], dim=0)
    assert cosine > 0.99
