"""The probability mass rkl_disc fine-tuning moves between frequency buckets (known answers)."""

import pytest
import torch
from torch import nn

from lmdisc.data.corpus import TokenizedSplit
from lmdisc.losses import BatchContext, ReverseKLLoss


class FixedLogits(nn.Module):
    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = nn.Parameter(logits)
        self.vocab_size = logits.numel()

    def forward(self, tokens, state=None):
        return self.logits.expand(*tokens.shape, -1), None, {}


def test_mass_moved_per_bucket_matches_a_direct_sum_and_conserves_probability():
    # word counts in train: 0 -> 1, 1 -> 5, 2 -> 20, 3 -> 200: buckets 1-9 {0, 1}, 10-99 {2}, 100-999 {3}
    train = torch.tensor([0] + [1] * 5 + [2] * 20 + [3] * 200)
    q0_logits = torch.tensor([0.0, 0.5, 1.0, 3.0])
    q_logits = torch.tensor([1.0, 1.0, 0.5, 2.0])
    loss = ReverseKLLoss(FixedLogits(q0_logits))
    loss.bind_corpus({"train": TokenizedSplit(train, torch.ones(len(train)), torch.zeros_like(train))})
    inputs = torch.zeros(2, 3, dtype=torch.long)
    targets = torch.tensor([[1, 2, 3], [0, -100, 3]])
    out = loss(q_logits.expand(2, 3, -1), targets, BatchContext(inputs=inputs, first_window=True))
    delta = torch.softmax(q_logits, -1) - torch.softmax(q0_logits, -1)
    expected = {"1-9": delta[0] + delta[1], "10-99": delta[2], "100-999": delta[3]}
    moved = {k.split("/", 1)[1]: v for k, v in out.logs.items() if k.startswith("mass_moved/")}
    assert moved.keys() == expected.keys()
    for name, value in expected.items():
        assert moved[name].item() == pytest.approx(value.item(), abs=1e-6)
    assert sum(moved.values()).item() == pytest.approx(0.0, abs=1e-6)
    assert moved["1-9"].item() > 0  # this q puts more mass on the rare words than q_0 does
