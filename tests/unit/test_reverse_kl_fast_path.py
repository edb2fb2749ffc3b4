"""The fast paths of the rKL term agree with the plain formulas: the closed-form gradient with
autograd's, and a lm_frozen discriminator's shared features with a separate encoder pass."""

import copy

import pytest
import torch

from lmdisc.losses import BatchContext, ReverseKLLoss
from lmdisc.losses.reverse_kl import _ReverseKLTerm, reverse_kl_terms
from lmdisc.models.discriminator import build_discriminator
from lmdisc.models.lstm import LSTMLanguageModel


def test_closed_form_gradient_matches_autograd_through_log_softmax():
    torch.manual_seed(0)
    V = 30
    logits = torch.randn(2, 5, V, dtype=torch.float64, requires_grad=True)
    log_q0 = torch.log_softmax(torch.randn(2, 5, V, dtype=torch.float64), -1)
    s = torch.randn(2, 5, V, dtype=torch.float64)
    targets = torch.randint(0, V, (2, 5))
    targets[1, 3] = -100  # an ignored position contributes nothing
    mask = targets != -100
    reference = (reverse_kl_terms(torch.log_softmax(logits, -1), log_q0, s, mask).sum() / mask.sum()).item()
    (expected,) = torch.autograd.grad(
        reverse_kl_terms(torch.log_softmax(logits, -1), log_q0, s, mask).sum() / mask.sum(), logits
    )

    class Fixed(torch.nn.Module):
        def __init__(self, out):
            super().__init__()
            self.out = out
            self.anchor = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))

        def forward(self, tokens, state=None):
            return self.out, None, {}

    loss = ReverseKLLoss(Fixed(log_q0), Fixed(s))
    out = loss(logits, targets, BatchContext(inputs=targets.clamp_min(0), first_window=True))
    (actual,) = torch.autograd.grad(out.loss, logits)
    assert out.loss.item() == pytest.approx(reference, abs=1e-6)
    # log_softmax runs in fp32 inside the loss (DESIGN.md §4), hence the fp32-level tolerance
    assert torch.allclose(actual, expected, atol=1e-6)
    assert actual[1, 3].abs().max() == 0


def test_a_second_backward_through_the_term_is_refused():
    # the backward reuses its saved buffer for the gradient, so running it twice would be wrong
    logits = torch.randn(1, 3, 7, requires_grad=True)
    q = torch.softmax(logits.detach(), -1)
    d = torch.randn(1, 3, 7)
    value = _ReverseKLTerm.apply(logits, q, d).sum()
    value.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="cannot run twice"):
        value.backward()


def test_frozen_lm_discriminator_reuses_q0_features_with_identical_results():
    torch.manual_seed(1)
    V = 40
    lm = LSTMLanguageModel(V, emb_size=16, hidden_size=16)
    disc = build_discriminator("lm_frozen", V, lm)
    torch.nn.init.normal_(disc.head.weight)
    shared = ReverseKLLoss(copy.deepcopy(lm), copy.deepcopy(disc))
    separate = ReverseKLLoss(copy.deepcopy(lm), copy.deepcopy(disc))
    separate.shared_body = False
    assert shared.shared_body
    inputs = torch.randint(0, V, (3, 6))
    for first, diagnostics in ((True, True), (False, True), (False, False)):  # carried state too
        results = []
        for loss in (shared, separate):
            logits = torch.randn(3, 6, V, generator=torch.Generator().manual_seed(2)).requires_grad_()
            ctx = BatchContext(inputs=inputs, first_window=first, diagnostics=diagnostics)
            out = loss(logits, inputs, ctx)
            results.append((out, torch.autograd.grad(out.loss, logits)[0]))
        (a, grad_a), (b, grad_b) = results
        assert torch.allclose(a.loss, b.loss, atol=1e-5)
        assert torch.allclose(grad_a, grad_b, atol=1e-6)
        if diagnostics:
            assert torch.allclose(a.logs["mean_s_under_q"], b.logs["mean_s_under_q"], atol=1e-5)
        else:
            assert a.logs == {}  # no diagnostics on steps whose logs are not kept


def test_a_discriminator_body_that_differs_from_q0_is_not_shared():
    lm = LSTMLanguageModel(20, emb_size=8, hidden_size=8)
    disc = build_discriminator("lm_frozen", 20, lm)
    other = LSTMLanguageModel(20, emb_size=8, hidden_size=8)
    assert not ReverseKLLoss(other, disc).shared_body
    assert not ReverseKLLoss(lm, build_discriminator("lm_copy", 20, lm)).shared_body
