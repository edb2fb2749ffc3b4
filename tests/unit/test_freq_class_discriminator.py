"""The frequency-class discriminator: its BCE optimum is known in closed form, and it survives a
checkpoint round trip (the word classes are a saved buffer)."""

import torch

from lmdisc.checkpoint import load_discriminator
from lmdisc.losses import discriminator_bce
from lmdisc.models.discriminator import build_discriminator

V, POSITIONS = 30, 4000


def test_trained_class_logits_reach_the_closed_form_optimum():
    """β_k* = log(N_k / M_k): N_k true next words in class k, M_k the q_0 mass on class k."""
    gen = torch.Generator().manual_seed(0)
    word_class = torch.arange(V) % 3
    log_q0 = torch.log_softmax(torch.randn(1, POSITIONS, V, generator=gen) * 2, dim=-1)
    # the data over-uses class 0 and under-uses class 2 relative to q_0
    p = torch.softmax(log_q0 + torch.tensor([1.0, 0.0, -0.7])[word_class], dim=-1)
    targets = torch.multinomial(p[0], 1, generator=gen).T
    counts = torch.bincount(word_class[targets[0]], minlength=3).double()
    mass = torch.zeros(3, dtype=torch.float64).index_add_(0, word_class, log_q0[0].exp().sum(0).double())
    expected = torch.log(counts / mass)

    disc = build_discriminator("freq_class", V, word_class=word_class)
    optimizer = torch.optim.LBFGS(disc.parameters(), lr=1, max_iter=100, line_search_fn="strong_wolfe")
    inputs, mask = torch.zeros_like(targets), torch.ones_like(targets, dtype=torch.bool)

    def closure():
        optimizer.zero_grad()
        loss = discriminator_bce(disc(inputs)[0], targets, log_q0, mask, "exact", 1)
        loss.backward()
        return loss

    optimizer.step(closure)
    assert torch.allclose(disc.class_logit.double(), expected, atol=1e-3)
    assert expected[0] > 0 > expected[2]  # it did find the planted over- and under-use


def test_scores_are_the_class_logit_in_every_context_and_survive_a_checkpoint(tmp_path):
    word_class = torch.tensor([0, 1, 1, 2, 0])
    disc = build_discriminator("freq_class", 5, word_class=word_class)
    with torch.no_grad():
        disc.class_logit.copy_(torch.tensor([0.5, -1.0, 2.0]))
    s, state, _ = disc(torch.zeros(2, 3, dtype=torch.long))
    assert s.shape == (2, 3, 5) and state is None
    assert torch.equal(s[1, 2], torch.tensor([0.5, -1.0, -1.0, 2.0, 0.5]))
    ckpt = {
        "state_dict": {f"discriminator.{k}": v for k, v in disc.state_dict().items()},
        "lmdisc": {
            "kind": "discriminator",
            "vocab": list("abcde"),
            "config": {"discriminator": {"encoder": "freq_class"}},
            "lm": {},
        },
    }
    torch.save(ckpt, tmp_path / "disc.ckpt")
    loaded, _ = load_discriminator(tmp_path / "disc.ckpt")
    assert torch.equal(loaded(torch.zeros(1, 1, dtype=torch.long))[0], s[:1, :1])
