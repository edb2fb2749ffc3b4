"""The GPT model, the HF wrapper, input-only embedding rows and the chunked cross-entropy."""

import math

import pytest
import torch
import torch.nn.functional as F

from lmdisc.data.window import IGNORE_INDEX
from lmdisc.losses import BatchContext, CompositeLoss, CrossEntropyLoss, PerplexityLoss
from lmdisc.losses.chunked import chunked_nll
from lmdisc.models import GPT, HFCausalLM, LSTMLanguageModel, TokenEmbedding


def _gpt(**options) -> GPT:
    torch.manual_seed(0)
    return GPT(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0, **options)


def _tiny_llama(tmp_path) -> HFCausalLM:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=40,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(tmp_path / "llama")
    return HFCausalLM(vocab_size=40, name_or_path=str(tmp_path / "llama"))


@pytest.mark.parametrize("which", ["gpt", "hf"])
def test_changing_a_future_token_never_changes_past_logits(which, tmp_path):
    model = (_gpt() if which == "gpt" else _tiny_llama(tmp_path)).eval()
    tokens = torch.randint(0, 40, (2, 12), generator=torch.Generator().manual_seed(1))
    changed = tokens.clone()
    changed[:, 7] = (changed[:, 7] + 1) % 40
    with torch.no_grad():
        before, state, _ = model(tokens)
        after, _, _ = model(changed)
    assert state is None and not model.carries_state
    assert torch.equal(before[:, :7], after[:, :7])
    assert not torch.allclose(before[:, 7:], after[:, 7:])


def test_gpt_ties_its_output_layer_and_scales_residual_projections():
    model = _gpt()
    assert model.output_layer()[0] is model.wte.weight
    for name, param in model.named_parameters():
        if name.endswith("c_proj.weight"):
            assert param.std().item() == pytest.approx(0.02 / math.sqrt(4), rel=0.15)
        elif name.endswith("c_fc.weight"):
            assert param.std().item() == pytest.approx(0.02, rel=0.15)
    with pytest.raises(ValueError, match="longer than block_size"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_parameter_groups_decay_matrices_only():
    model = _gpt()
    groups = {g["group"]: g for g in model.parameter_groups()}
    names = {id(p): n for n, p in model.named_parameters()}
    decay = {names[id(p)] for p in groups["decay"]["params"]}
    no_decay = {names[id(p)] for p in groups["no_decay"]["params"]}
    assert groups["no_decay"]["weight_decay"] == 0.0 and "weight_decay" not in groups["decay"]
    assert "h.0.attn.c_attn.weight" in decay and "h.1.mlp.c_proj.weight" in decay
    assert {"wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias", "h.0.attn.c_attn.bias"} <= no_decay
    assert not decay & no_decay and len(decay | no_decay) == len(list(model.parameters()))
    # the recurrent recipes keep one group in the model's order (their numbers must not move)
    lstm = LSTMLanguageModel(40, 8, 8)
    assert [len(g["params"]) for g in lstm.parameter_groups()] == [len(list(lstm.parameters()))]


def test_activation_checkpointing_gives_the_same_loss_and_gradients():
    tokens = torch.randint(0, 40, (2, 16), generator=torch.Generator().manual_seed(2))
    grads = []
    for checkpointing in (False, True):
        model = _gpt(activation_checkpointing=checkpointing).train()
        logits, _, _ = model(tokens)
        F.cross_entropy(logits.reshape(-1, 40), tokens.roll(-1, 1).reshape(-1)).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)


def test_input_only_rows_start_at_zero_are_read_and_trained_but_never_predicted():
    torch.manual_seed(0)
    embedding = TokenEmbedding(5, 3, input_only=1)
    assert torch.equal(embedding.extra, torch.zeros(1, 3)) and embedding.weight.shape == (5, 3)
    tokens = torch.tensor([[0, 5, 2]])
    out = embedding(tokens)
    assert torch.equal(out[0, 0], embedding.weight[0]) and torch.equal(out[0, 1], torch.zeros(3))
    out.sum().backward()
    assert embedding.extra.grad.abs().sum() > 0
    model = LSTMLanguageModel(5, 4, 4, input_only_tokens=1)
    logits, _, _ = model(tokens)
    assert logits.shape[-1] == 5


def test_input_only_rows_do_not_change_the_initialisation():
    torch.manual_seed(3)
    plain = LSTMLanguageModel(30, 8, 8)
    torch.manual_seed(3)
    reserved = LSTMLanguageModel(30, 8, 8, input_only_tokens=1)
    extra = dict(reserved.named_parameters())
    assert torch.equal(extra.pop("embedding.extra"), torch.zeros(1, 8))
    for name, param in plain.named_parameters():
        assert torch.equal(param, extra[name]), name


@pytest.mark.parametrize("bias", [True, False])
def test_chunked_cross_entropy_equals_the_full_one_in_value_and_gradient(bias):
    torch.manual_seed(0)
    hidden = torch.randn(3, 7, 16, requires_grad=True)
    weight = torch.randn(50, 16, requires_grad=True)
    b = torch.randn(50, requires_grad=True) if bias else None
    targets = torch.randint(0, 50, (3, 7))
    targets[1, 2] = targets[2, 6] = IGNORE_INDEX
    total, per_token = chunked_nll(hidden, weight, b, targets, chunk=4)
    (3.0 * total).backward()
    chunked = [hidden.grad.clone(), weight.grad.clone(), *([b.grad.clone()] if bias else [])]
    for t in (hidden, weight, *([b] if bias else [])):
        t.grad = None
    logits = F.linear(hidden, weight, b)
    reference = F.cross_entropy(logits.reshape(-1, 50), targets.reshape(-1), reduction="sum")
    (3.0 * reference).backward()
    full = [hidden.grad, weight.grad, *([b.grad] if bias else [])]
    assert total.item() == pytest.approx(reference.item(), rel=1e-5)
    assert per_token.shape == targets.shape and (per_token[targets == IGNORE_INDEX] == 0).all()
    for ours, theirs in zip(chunked, full):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("loss", ["ce", "ppl"])
def test_losses_run_on_chunks_from_features_as_on_logits(loss):
    model = _gpt()
    tokens = torch.randint(0, 40, (2, 16), generator=torch.Generator().manual_seed(4))
    targets = tokens.roll(-1, 1)
    term = CrossEntropyLoss() if loss == "ce" else PerplexityLoss()
    composite = CompositeLoss({"t": {"weight": 1.0, "loss": term}})
    assert not composite.needs_logits
    features, _, _ = model.features(tokens)
    ctx = BatchContext(tokens, features=features, output_layer=model.output_layer(), chunk_size=5)
    chunked = composite(None, targets, ctx).loss
    logits = model.decode(features)
    full = composite(logits, targets, BatchContext(tokens)).loss
    assert chunked.item() == pytest.approx(full.item(), rel=1e-5)
    (g_chunked,) = torch.autograd.grad(chunked, model.wte.weight, retain_graph=True)
    (g_full,) = torch.autograd.grad(full, model.wte.weight)
    torch.testing.assert_close(g_chunked, g_full, rtol=1e-4, atol=1e-6)
