"""The chunked CE + rKL pass (loss=rkl_disc with ce_chunk_size) against the plain path on all logits:
the same loss, gradients (features, output weight and bias), per-token NLL and diagnostics, for
every kind of discriminator and for the s = 0 control, with ignored targets and a last short chunk."""

import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from lmdisc.data.window import IGNORE_INDEX, Window
from lmdisc.losses import BatchContext, CompositeLoss, CrossEntropyLoss, PerplexityLoss, ReverseKLLoss
from lmdisc.losses.chunked_rkl import FrozenChunks, chunked_ce_reverse_kl
from lmdisc.models.discriminator import build_discriminator
from lmdisc.models.gpt import GPT
from lmdisc.modules import LanguageModel

V, H, B, T = 37, 16, 3, 7


def tiny_gpt(seed: int) -> GPT:
    torch.manual_seed(seed)
    return GPT(V, block_size=T, n_layer=1, n_head=2, n_embd=H, dropout=0.0)


def discriminator(kind: str, reference: GPT):
    if kind == "none":
        return None
    gen = torch.Generator().manual_seed(3)
    if kind == "freq_class":
        disc = build_discriminator("freq_class", V, word_class=torch.randint(0, 4, (V,), generator=gen))
        disc.class_logit.data.normal_(generator=gen)
        return disc
    if kind == "lstm":
        disc = build_discriminator("lstm", V, lstm={"emb_size": 8, "hidden_size": 8})
    else:  # lm_frozen: q_0's own body, so its features are shared
        disc = build_discriminator(kind, V, reference)
    disc.head.weight.data.normal_(generator=gen)
    disc.head.bias.data.normal_(generator=gen)
    return disc


def rkl_loss(kind: str, ce_weight: float = 1.0, reduction: str = "token_mean") -> CompositeLoss:
    reference = tiny_gpt(1)
    rkl = ReverseKLLoss(reference, discriminator(kind, reference))
    train_ids = torch.randint(0, V, (500,), generator=torch.Generator().manual_seed(4))
    rkl.bind_corpus({"train": SimpleNamespace(ids=train_ids)})
    return CompositeLoss(
        {
            "ce": {"weight": ce_weight, "loss": CrossEntropyLoss(reduction)},
            "rkl": {"weight": 0.7, "loss": rkl},
        }
    )


def batch():
    gen = torch.Generator().manual_seed(5)
    inputs = torch.randint(0, V, (B, T), generator=gen)
    targets = torch.randint(0, V, (B, T), generator=gen)
    targets[0, 2] = targets[2, 6] = IGNORE_INDEX
    features = torch.randn(B, T, H, generator=gen)
    weight = torch.randn(V, H, generator=gen) * 0.5
    bias = torch.randn(V, generator=gen)
    return inputs, targets, features, weight, bias


def run(loss, chunk: int, diagnostics: bool, ctx_first: bool = True):
    inputs, targets, features, weight, bias = batch()
    leaves = [t.clone().requires_grad_() for t in (features, weight, bias)]
    ctx = BatchContext(inputs=inputs, first_window=ctx_first, diagnostics=diagnostics)
    if chunk:
        ctx.features, ctx.output_layer, ctx.chunk_size = leaves[0], (leaves[1], leaves[2]), chunk
        out = loss(None, targets, ctx)
    else:
        out = loss(F.linear(leaves[0], leaves[1], leaves[2]), targets, ctx)
    grads = torch.autograd.grad(out.loss, leaves)
    return out, grads, ctx.token_nll(None, targets) if chunk else None


@pytest.mark.parametrize("kind", ["none", "freq_class", "lm_frozen", "lstm"])
@pytest.mark.parametrize("diagnostics", [True, False])
def test_chunked_pass_equals_the_plain_path(kind, diagnostics):
    torch.manual_seed(0)
    plain_loss = rkl_loss(kind)
    chunked_loss = copy.deepcopy(plain_loss)
    plain, plain_grads, _ = run(plain_loss, 0, diagnostics)
    chunked, chunked_grads, nll = run(chunked_loss, 4, diagnostics)  # 21 positions: 5 chunks, the last of 1
    assert plain.loss.item() == pytest.approx(chunked.loss.item(), abs=1e-5)
    assert plain.logs.keys() == chunked.logs.keys()
    for key, value in plain.logs.items():
        assert chunked.logs[key].item() == pytest.approx(value.item(), abs=1e-5), key
    for name, a, b in zip(("features", "weight", "bias"), plain_grads, chunked_grads):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5), name
    assert plain_grads[0][0, 2].abs().max() == 0 and chunked_grads[0][0, 2].abs().max() == 0  # ignored
    _, targets, features, weight, bias = batch()
    expected_nll = F.cross_entropy(
        F.linear(features, weight, bias).reshape(-1, V), targets.reshape(-1), reduction="none"
    ).view(B, T)
    assert torch.allclose(nll, expected_nll, atol=1e-5)
    if diagnostics:
        assert "rkl/kl_q_q0" in chunked.logs and any(k.startswith("rkl/mass_moved/") for k in chunked.logs)
        assert ("rkl/mean_s_under_q" in chunked.logs) == (kind != "none")
    else:
        assert set(chunked.logs) == {"ce", "rkl"}


def test_chunked_pass_follows_the_weights_of_the_loss():
    # another CE weight and reduction change the NLL's coefficient the pass must form gradients with
    plain, plain_grads, _ = run(rkl_loss("freq_class", 0.3, "sum_over_time"), 0, False)
    chunked, chunked_grads, _ = run(rkl_loss("freq_class", 0.3, "sum_over_time"), 6, False)
    assert plain.loss.item() == pytest.approx(chunked.loss.item(), abs=1e-5)
    for a, b in zip(plain_grads, chunked_grads):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)


def test_sums_weighed_otherwise_than_announced_are_refused():
    _, targets, features, weight, _ = batch()
    features.requires_grad_()
    z0 = torch.randn(B * T, V)
    frozen = FrozenChunks(lambda start, stop: z0[start:stop].clone())
    nll_sum, term_sum, _, _ = chunked_ce_reverse_kl(features, weight, None, targets, frozen, 8, 1.0, 1.0)
    with pytest.raises(RuntimeError, match="weighs them"):
        (2.0 * nll_sum + term_sum).backward()


def test_the_module_chunks_rkl_disc_and_trains_as_the_plain_path_does():
    inputs, targets, _, _, _ = batch()
    window = Window(inputs, targets, torch.ones_like(targets), torch.zeros_like(targets))
    losses, grads = [], []
    for chunk in (0, 5):
        module = LanguageModel(
            model=tiny_gpt(7),
            loss=rkl_loss("lm_frozen"),
            optimizer=lambda params: torch.optim.SGD(params, lr=0.1),
            carry_state=False,
            ce_chunk_size=chunk,
        )
        assert module.chunk_size == chunk
        loss = module.training_step(window, 0)
        losses.append(loss.item())
        grads.append(torch.autograd.grad(loss, list(module.model.parameters())))
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)


def test_rkl_with_a_perplexity_term_keeps_all_logits():
    # exp(CE) is not linear in the NLL sum: its weight in the loss is unknown before the backward
    loss = rkl_loss("none")
    loss.terms["ppl"] = (0.1, PerplexityLoss())
    assert loss.needs_logits
    assert not rkl_loss("none").needs_logits


def test_under_bf16_autocast_the_chunked_pass_stays_close_to_the_plain_path():
    # both run the output layers in bf16; the fused pass casts its logit gradient once for both products
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain, plain_grads, _ = run(rkl_loss("lm_frozen"), 0, True)
        chunked, chunked_grads, _ = run(rkl_loss("lm_frozen"), 4, True)
    assert chunked.loss.item() == pytest.approx(plain.loss.item(), rel=1e-3)
    for a, b in zip(plain_grads, chunked_grads):
        assert F.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.9999
