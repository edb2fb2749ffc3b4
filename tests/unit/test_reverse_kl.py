"""Known answers for the discriminator and the reverse-KL term on a source with known p.

The source is a random first-order Markov chain over a small vocabulary, so p(w|c) = P[prev, w]
is known exactly; bigram models (a logit table indexed by the previous word) play q_θ and q_0.
"""

import math

import pytest
import torch
from torch import nn

from lmdisc.data.synthetic import exact_kl_rows, markov_chain, sample_chain
from lmdisc.losses import BatchContext, ReverseKLLoss, discriminator_bce, discriminator_stats
from lmdisc.models.discriminator import Discriminator, LSTMEncoder

V = 12


class BigramLM(nn.Module):
    """q(w | previous word) = softmax(table[previous])."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = nn.Parameter(table.clone())

    def forward(self, tokens, state=None):
        return self.table[tokens], None, {}


class TableModule(nn.Module):
    """A fixed per-previous-word output (the oracle discriminator)."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.register_buffer("table", table)
        self.anchor = nn.Parameter(torch.zeros(()))  # so the loss can find the device

    def forward(self, tokens, state=None):
        return self.table[tokens], None, {}


def test_oracle_discriminator_gives_the_exact_reverse_kl():
    P = markov_chain(V, 0)
    q0_table = torch.randn(V, V, generator=torch.Generator().manual_seed(1))
    theta_table = torch.randn(V, V, generator=torch.Generator().manual_seed(2))
    log_q0 = torch.log_softmax(q0_table, -1)
    oracle = TableModule(P.log() - log_q0)
    loss = ReverseKLLoss(BigramLM(q0_table), oracle)
    model = BigramLM(theta_table)
    tokens = sample_chain(P, 301, 3)
    inputs, targets = tokens[:-1].view(3, 100), tokens[1:].view(3, 100)
    logits, _, _ = model(inputs)
    out = loss(logits, targets, BatchContext(inputs, first_window=True))
    exact = exact_kl_rows(torch.log_softmax(theta_table, -1), P.log())[inputs].mean()
    assert out.loss.item() == pytest.approx(exact.item(), abs=1e-5)


def test_zero_discriminator_at_the_base_model_gives_zero_term_and_gradient():
    table = torch.randn(V, V)
    model = BigramLM(table)
    loss = ReverseKLLoss(BigramLM(table), None)
    inputs = torch.randint(0, V, (2, 9))
    logits, _, _ = model(inputs)
    out = loss(logits, inputs, BatchContext(inputs, first_window=True))
    out.loss.backward()
    assert abs(out.loss.item()) < 1e-6
    assert model.table.grad.abs().max().item() < 1e-6


def test_one_step_moves_probability_towards_words_the_discriminator_favours():
    # q_θ = q_0 uniform; s has mean zero per context: exactly the words with s > 0 gain
    model = BigramLM(torch.zeros(V, V))
    s = torch.randn(V, V)
    s = s - s.mean(-1, keepdim=True)
    loss = ReverseKLLoss(BigramLM(torch.zeros(V, V)), TableModule(s))
    inputs = torch.arange(V).view(1, V)
    logits, _, _ = model(inputs)
    loss(logits, inputs, BatchContext(inputs, first_window=True)).loss.backward()
    with torch.no_grad():
        before = torch.softmax(model.table, -1).clone()
        model.table -= 0.5 * model.table.grad
        change = torch.softmax(model.table, -1) - before
    assert torch.equal(change > 0, s > 0) and torch.equal(change < 0, s < 0)


def test_trained_discriminator_recovers_kl_of_a_wrong_q0():
    torch.manual_seed(0)
    P = markov_chain(V, 10, sharpness=1.5)
    q0_table = P.log() + 0.7 * torch.randn(
        V, V, generator=torch.Generator().manual_seed(11)
    )  # deliberately wrong
    log_q0_table = torch.log_softmax(q0_table, -1)
    stream = sample_chain(P, 40_001, 12)
    inputs, targets = stream[:-1].view(40, 1000), stream[1:].view(40, 1000)
    disc = Discriminator(LSTMEncoder(V, emb_size=16, hidden_size=32), V)
    optimizer = torch.optim.Adam(disc.parameters(), lr=0.02)
    mask = torch.ones_like(targets, dtype=torch.bool)
    for _ in range(4):
        for start in range(0, 1000, 50):
            x, y = inputs[:, start : start + 50], targets[:, start : start + 50]
            s, _, _ = disc(x)
            loss = discriminator_bce(s, y, log_q0_table[x], mask[:, :50])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        s, _, _ = disc(inputs)
        stats = discriminator_stats(s, targets, log_q0_table[inputs], mask)
    estimate = (stats["kl_q0_p"] / stats["positions"]).item()
    exact = exact_kl_rows(log_q0_table, P.log())[inputs].mean().item()
    assert estimate == pytest.approx(exact, rel=0.10)
    assert (stats["auc"] / stats["positions"]).item() > 0.6
    assert (stats["bce"] / stats["positions"]).item() < 2 * math.log(2)


def test_zero_head_starts_at_half_and_estimates_zero():
    disc = Discriminator(LSTMEncoder(V, 8, 8), V)
    inputs = torch.randint(0, V, (2, 5))
    s, _, _ = disc(inputs)
    assert torch.equal(s, torch.zeros_like(s))
    log_q0 = torch.log_softmax(torch.randn(2, 5, V), -1)
    mask = torch.ones(2, 5, dtype=torch.bool)
    stats = discriminator_stats(s, inputs, log_q0, mask)
    assert (stats["bce"] / 10).item() == pytest.approx(2 * math.log(2))
    assert stats["kl_q0_p"].item() == 0 and (stats["auc"] / 10).item() == pytest.approx(0.5)


def test_sampled_negatives_estimate_the_exact_loss():
    torch.manual_seed(0)
    s = torch.randn(4, 50, V)
    targets = torch.randint(0, V, (4, 50))
    log_q0 = torch.log_softmax(torch.randn(4, 50, V), -1)
    mask = torch.ones(4, 50, dtype=torch.bool)
    exact = discriminator_bce(s, targets, log_q0, mask, "exact")
    sampled = discriminator_bce(s, targets, log_q0, mask, "sampled", k=400)
    assert sampled.item() == pytest.approx(exact.item(), rel=0.03)
