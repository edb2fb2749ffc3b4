import math

import pytest
import torch
from torchmetrics.text import Perplexity

from lmdisc.data.window import IGNORE_INDEX, Window
from lmdisc.errors import LmdiscError
from lmdisc.evaluation import evaluate_windows
from lmdisc.losses import BatchContext, CompositeLoss, CrossEntropyLoss, token_nll
from lmdisc.metrics import TokenNLL


def test_uniform_model_has_perplexity_equal_to_vocabulary_size():
    V = 137
    metric = TokenNLL()
    logits = torch.zeros(4, 9, V)
    targets = torch.randint(0, V, (4, 9))
    metric.update(token_nll(logits, targets), targets)
    assert metric.compute().exp().item() == pytest.approx(V, rel=1e-6)
    assert metric.nll_sum.dtype == torch.float64


def test_perplexity_matches_torchmetrics_and_is_token_weighted():
    torch.manual_seed(0)
    ours, reference = TokenNLL(), Perplexity(ignore_index=IGNORE_INDEX)
    for t in (3, 11):  # batches of different lengths: a mean of batch perplexities would differ
        logits = torch.randn(2, t, 20) * 3
        targets = torch.randint(0, 20, (2, t))
        targets[0, -1] = IGNORE_INDEX
        ours.update(token_nll(logits, targets), targets)
        reference.update(logits, targets)
    assert ours.compute().exp().item() == pytest.approx(reference.compute().item(), rel=1e-5)
    assert ours.tokens.item() == 2 * 3 + 2 * 11 - 2


def test_ignored_targets_change_nothing():
    logits = torch.randn(1, 4, 10)
    targets = torch.tensor([[1, 2, IGNORE_INDEX, IGNORE_INDEX]])
    ctx = BatchContext(inputs=targets)
    out = CrossEntropyLoss()(logits, targets, ctx)
    expected = torch.nn.functional.cross_entropy(logits[0, :2], targets[0, :2])
    torch.testing.assert_close(out.loss, expected)


def test_sum_over_time_is_token_mean_times_steps():
    logits = torch.randn(3, 20, 11)
    targets = torch.randint(0, 11, (3, 20))
    mean = CrossEntropyLoss("token_mean")(logits, targets, BatchContext(targets)).loss
    summed = CrossEntropyLoss("sum_over_time")(logits, targets, BatchContext(targets)).loss
    torch.testing.assert_close(summed, mean * 20)


def test_composite_sums_weighted_terms_and_logs_each():
    logits = torch.randn(2, 5, 7)
    targets = torch.randint(0, 7, (2, 5))
    ce = CrossEntropyLoss()
    composite = CompositeLoss({"a": {"weight": 1.0, "loss": ce}, "b": {"weight": 0.5, "loss": ce}})
    out = composite(logits, targets, BatchContext(targets))
    single = ce(logits, targets, BatchContext(targets)).loss
    torch.testing.assert_close(out.loss, 1.5 * single)
    assert set(out.logs) == {"a", "b"}


def test_bad_loss_configs_are_refused():
    with pytest.raises(LmdiscError, match="no weight"):
        CompositeLoss({"ce": {"loss": CrossEntropyLoss()}})
    with pytest.raises(LmdiscError, match="empty"):
        CompositeLoss({})
    with pytest.raises(ValueError, match="reduction"):
        CrossEntropyLoss("mean_of_everything")


def test_token_nll_is_fp32_under_bf16_logits():
    logits = (torch.randn(2, 3, 30) * 4).bfloat16()
    targets = torch.randint(0, 30, (2, 3))
    nll = token_nll(logits, targets)
    assert nll.dtype == torch.float32 and torch.isfinite(nll).all()
    assert nll.mean().item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits.float().reshape(-1, 30), targets.reshape(-1)).item(),
        rel=1e-6,
    )
    assert math.isfinite(nll.sum().item())


class _Uniform(torch.nn.Module):
    """Equal logits for every word: perplexity |V| whatever the text."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab

    def forward(self, tokens, state=None):
        return torch.zeros(*tokens.shape, self.vocab), state, {}


def test_stream_evaluation_of_a_uniform_model_and_its_progress_lines():
    def window():
        ids = torch.randint(0, 50, (2, 5))
        return Window(ids, ids, torch.ones(2, 5), torch.zeros(2, 5, dtype=torch.long))

    V, windows = 50, [window() for _ in range(4)]
    lines = []
    result = evaluate_windows(_Uniform(V), windows, progress=lines.append, progress_every_s=0)
    assert result["ppl"] == pytest.approx(V) and result["tokens"] == 40
    assert result["word_ppl"] == pytest.approx(V)  # one word per token
    assert len(lines) == 4 and lines[0].startswith("window 1/4 (25%) · ") and lines[-1].endswith("~0 s left")
    lines.clear()
    evaluate_windows(_Uniform(V), iter(windows), progress=lines.append, progress_every_s=0)  # length unknown
    assert lines[1].startswith("window 2 · ") and "left" not in lines[1]
    assert (
        evaluate_windows(_Uniform(V), windows, progress=lines.append, progress_every_s=3600)["tokens"] == 40
    )
    assert len(lines) == 4  # nothing printed within the interval
