"""The prediction behind CE vs CE + α·PPL under SGD and AdamW: the perplexity term multiplies the
cross-entropy gradient by (1 + α·PPL), so SGD's step grows by that factor, while Adam's update
m/√v is invariant to a constant gradient scale and its first step does not change at all."""

from __future__ import annotations

import pytest
import torch

from lmdisc.config import instantiate
from lmdisc.losses import CompositeLoss
from lmdisc.losses.base import BatchContext
from lmdisc.models import GPT

V = 40
ALPHA = 0.01


def _loss(name: str) -> CompositeLoss:
    ce = {"weight": 1.0, "loss": {"_target_": "lmdisc.losses.CrossEntropyLoss", "reduction": "token_mean"}}
    terms = {"ce": ce}
    if name == "ppl_reg":
        terms["ppl"] = {"weight": ALPHA, "loss": {"_target_": "lmdisc.losses.PerplexityLoss"}}
    return instantiate({"_target_": "lmdisc.losses.CompositeLoss", "name": name, "terms": terms})


def _update(loss_name: str, optimizer_name: str) -> tuple[dict[str, torch.Tensor], float]:
    """The first step's parameter change, and the batch perplexity before it."""
    torch.manual_seed(0)
    model = GPT(V, block_size=8, n_layer=1, n_head=2, n_embd=8).double()  # exact enough to compare steps
    tokens = torch.randint(0, V, (4, 9), generator=torch.Generator().manual_seed(1))
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    if optimizer_name == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.0, eps=1e-12)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    logits, _, _ = model(inputs)
    out = _loss(loss_name)(logits, targets, BatchContext(inputs=inputs))
    ppl = float(torch.nn.functional.cross_entropy(logits.detach().reshape(-1, V), targets.reshape(-1)).exp())
    out.loss.backward()
    optimizer.step()
    return {n: p.detach() - before[n] for n, p in model.named_parameters()}, ppl


def test_sgd_step_is_scaled_by_one_plus_alpha_ppl():
    ce, ppl = _update("ce", "sgd")
    reg, _ = _update("ppl_reg", "sgd")
    for name in ce:
        torch.testing.assert_close(reg[name], (1 + ALPHA * ppl) * ce[name], rtol=1e-9, atol=1e-12)
    assert 1 + ALPHA * ppl > 1.3  # the factor is far from 1 here: the SGD steps really differ


def test_adamw_first_step_cancels_the_factor():
    ce, _ = _update("ce", "adamw")
    reg, _ = _update("ppl_reg", "adamw")
    for name in ce:
        torch.testing.assert_close(
            reg[name], ce[name], rtol=1e-4, atol=1e-6
        )  # eps matters only where |g| is tiny


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_the_update_is_not_zero(optimizer):
    update, _ = _update("ce", optimizer)
    assert sum(float(u.abs().sum()) for u in update.values()) > 0
