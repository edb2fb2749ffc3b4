"""Known answers for the perplexity losses and the uncertainty metrics."""

import math

import pytest
import torch
from torchmetrics.classification import MulticlassCalibrationError

from lmdisc.data.window import IGNORE_INDEX, Window
from lmdisc.errors import LmdiscError
from lmdisc.losses import BatchContext, CompositeLoss, CrossEntropyLoss, PerplexityLoss
from lmdisc.metrics import CalibrationError, PredictiveEntropy, SplitMetrics


def _batch(seed=0, v=13):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 5, v, generator=g, requires_grad=True)
    targets = torch.randint(0, v, (3, 5), generator=g)
    return logits, targets


def _ppl_reg(alpha):
    return CompositeLoss(
        {
            "ce": {"weight": 1.0, "loss": CrossEntropyLoss()},
            "ppl": {"weight": alpha, "loss": PerplexityLoss()},
        },
        alpha=alpha,
    )


def test_ppl_reg_value_and_gradient_follow_the_formula():
    alpha = 0.05
    logits, targets = _batch()
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, 13), targets.reshape(-1))
    (grad_ce,) = torch.autograd.grad(ce, logits)
    out = _ppl_reg(alpha)(logits, targets, BatchContext(targets))
    torch.testing.assert_close(out.loss, ce + alpha * ce.exp())
    (grad,) = torch.autograd.grad(out.loss, logits)
    torch.testing.assert_close(grad, (1 + alpha * ce.exp()) * grad_ce)


def test_ppl_loss_is_exp_ce_and_base_only_changes_reported_units():
    logits, targets = _batch(1)
    e = PerplexityLoss(base="e")(logits, targets, BatchContext(targets))
    two = PerplexityLoss(base=2)(logits, targets, BatchContext(targets))
    torch.testing.assert_close(e.loss, two.loss)
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, 13), targets.reshape(-1))
    torch.testing.assert_close(e.loss, ce.exp())
    torch.testing.assert_close(two.logs["cross_entropy_bits"], ce.detach() / math.log(2))
    (grad,) = torch.autograd.grad(e.loss, logits)
    (grad_ce,) = torch.autograd.grad(ce, logits)
    torch.testing.assert_close(grad, ce.exp() * grad_ce)


def test_exponent_clamp_keeps_a_huge_batch_finite():
    logits, targets = _batch(2)
    huge = (logits.detach() * 1e4).requires_grad_()
    out = _ppl_reg(0.1)(huge, targets, BatchContext(targets))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert torch.isfinite(huge.grad).all()
    assert out.logs["ppl"].item() == pytest.approx(math.exp(20.0), rel=1e-5)


def test_ignored_targets_change_nothing_in_the_ppl_loss():
    logits, targets = _batch(3)
    padded_targets = torch.cat([targets, torch.full((3, 2), IGNORE_INDEX)], 1)
    padded_logits = torch.cat([logits, torch.randn(3, 2, 13) * 50], 1)
    a = PerplexityLoss()(logits, targets, BatchContext(targets)).loss
    b = PerplexityLoss()(padded_logits, padded_targets, BatchContext(padded_targets)).loss
    torch.testing.assert_close(a, b)


def test_uniform_model_entropy_is_log2_v_bits_and_perplexity_v():
    v = 64
    metrics = SplitMetrics()
    targets = torch.randint(0, v, (4, 7))
    # every token ends half a word (two tokens a word): word-level perplexity is V squared
    window = Window(targets, targets, torch.full((4, 7), 0.5), torch.zeros(4, 7, dtype=torch.long))
    metrics.update(torch.zeros(4, 7, v), window)
    values = metrics.compute()
    assert values["entropy"].item() == pytest.approx(math.log2(v), rel=1e-6)
    assert values["ppl"].item() == pytest.approx(v, rel=1e-6)
    assert values["word_ppl"].item() == pytest.approx(v**2, rel=1e-6)


def test_ece_of_a_calibrated_predictor_is_near_zero_and_of_an_overconfident_one_is_not():
    torch.manual_seed(0)
    n, v = 200_000, 10
    confidence = torch.rand(n) * 0.85 + 0.15
    probs = ((1 - confidence) / (v - 1)).unsqueeze(1).repeat(1, v)
    probs[:, 0] = confidence
    correct = torch.rand(n) < confidence  # right exactly as often as it claims
    targets = torch.where(correct, 0, torch.randint(1, v, (n,)))
    ece = CalibrationError()
    ece.update(probs.log().unsqueeze(0), targets.unsqueeze(0))
    assert ece.compute().item() < 0.005
    sharp = torch.log_softmax(probs.log() * 5, -1)  # same ranking, far more confident
    overconfident = CalibrationError()
    overconfident.update(sharp.unsqueeze(0), targets.unsqueeze(0))
    assert overconfident.compute().item() > 0.1


def test_ece_matches_torchmetrics_on_random_logits():
    torch.manual_seed(1)
    logits = torch.randn(1, 500, 7) * 2
    targets = torch.randint(0, 7, (1, 500))
    ours = CalibrationError(n_bins=15)
    ours.update(torch.log_softmax(logits, -1), targets)
    reference = MulticlassCalibrationError(num_classes=7, n_bins=15, norm="l1")
    expected = reference(torch.softmax(logits[0], -1), targets[0])
    assert ours.compute().item() == pytest.approx(expected.item(), abs=1e-6)


def test_entropy_metric_skips_ignored_targets():
    metric = PredictiveEntropy()
    log_probs = torch.log_softmax(torch.randn(1, 4, 9), -1)
    targets = torch.tensor([[1, IGNORE_INDEX, 2, IGNORE_INDEX]])
    metric.update(log_probs, targets)
    expected = -(log_probs.exp() * log_probs).sum(-1)[0, [0, 2]].mean() / math.log(2)
    assert metric.compute().item() == pytest.approx(expected.item(), rel=1e-6)


def test_bad_perplexity_settings_are_refused():
    with pytest.raises(LmdiscError, match="base"):
        PerplexityLoss(base=10)
    with pytest.raises(LmdiscError, match="alpha"):
        _ppl_reg(-0.1)
    with pytest.raises(LmdiscError, match="max_log_ppl"):
        PerplexityLoss(max_log_ppl=0)
