"""finetune.mode trains exactly the parameters it names; layer-wise rates; gradual unfreezing; warmup."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lmdisc.errors import LmdiscError
from lmdisc.finetune import attach_lora, layer_map, merge_lora, optimizer_groups, plan_finetune
from lmdisc.models import GPT
from lmdisc.optim import warmup_schedule

V, H, L = 50, 16, 3


def tiny_gpt(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(V, block_size=16, n_layer=L, n_head=2, n_embd=H)


def step(model, lr: float = 0.1) -> None:
    """One AdamW step on a random batch, through the model's decay groups (as training does)."""
    tokens = torch.randint(0, V, (2, 8), generator=torch.Generator().manual_seed(1))
    optimizer = torch.optim.AdamW(optimizer_groups(model, 1.0, lr), lr=lr, weight_decay=0.1)
    logits, _, _ = model(tokens)
    F.cross_entropy(logits.reshape(-1, V), tokens.roll(-1, 1).reshape(-1)).backward()
    optimizer.step()


def snapshot(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


EXPECTED = {
    # head: the untied output layer (V x H) and the final LayerNorm (2H)
    "head": V * H + 2 * H,
    # last block (LayerNorms 4H; attention 3H^2+3H + H^2+H; MLP 4H^2+4H + 4H^2+H) plus the head
    "last_n": (4 * H + 4 * H * H + 4 * H + 8 * H * H + 5 * H) + V * H + 2 * H,
}


@pytest.mark.parametrize("mode", ["full", "head", "last_n", "lora"])
def test_each_mode_trains_exactly_what_it_names(mode):
    model = tiny_gpt()
    plan = plan_finetune(model, {"mode": mode, "n": 1, "lora": {"r": 2, "alpha": 4}}, pretrained=True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if mode == "full":
        assert plan.trainable == plan.total
    elif mode == "lora":
        # r x (in + out) per adapted Linear: c_attn (H -> 3H), c_proj (H -> H), c_fc (H -> 4H), mlp c_proj (4H -> H)
        assert plan.trainable == L * 2 * ((H + 3 * H) + (H + H) + (H + 4 * H) + (4 * H + H))
        assert trainable and all("lora_" in n for n in trainable)
    else:
        assert plan.trainable == EXPECTED[mode]
        assert model.lm_head is not None and model.lm_head.weight is not model.wte.weight
    assert plan.trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    before = snapshot(model)
    step(model)
    for name, param in model.named_parameters():
        if name in trainable:
            assert not torch.equal(param, before[name]), f"{name} should have trained"
        else:
            assert torch.equal(param, before[name]), f"{name} is frozen but changed"


def test_untying_keeps_the_logits_and_the_head_trains_alone():
    model = tiny_gpt()
    tokens = torch.randint(0, V, (1, 8))
    before = model(tokens)[0]
    plan_finetune(model, {"mode": "head"}, pretrained=True)
    torch.testing.assert_close(model(tokens)[0], before, rtol=0, atol=0)
    embedding = model.wte.weight.detach().clone()
    step(model)
    assert torch.equal(model.wte.weight, embedding)


def test_lora_merge_gives_the_adapted_logits():
    model = tiny_gpt()
    attach_lora(model, {"r": 2, "alpha": 4, "target_modules": ["c_attn"]})
    with torch.no_grad():  # B starts at zero: give the adapters something to merge
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_()
    tokens = torch.randint(0, V, (2, 8))
    adapted = model(tokens)[0]
    merged = merge_lora(model)
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(merged(tokens)[0], adapted, rtol=1e-5, atol=1e-5)


def test_layer_decay_scales_each_layer_from_the_top():
    model = tiny_gpt()
    groups = optimizer_groups(model, 0.5, 1.0)
    index = layer_map(model).index()
    for group in groups:
        for param in group["params"]:
            assert group["lr"] == 0.5 ** (L + 1 - index[id(param)])
    lrs = {g["group"]: g["lr"] for g in groups}
    assert lrs["decay/layer3"] == 0.5 and lrs["no_decay/layer0"] == 0.5**4  # top block; embeddings
    # the no-decay group keeps weight decay 0 in every layer
    assert all(g.get("weight_decay") == 0.0 for g in groups if g["group"].startswith("no_decay"))
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


@pytest.mark.parametrize("decay", [0.0, 1.5, -0.1])
def test_layer_decay_out_of_range_is_refused(decay):
    with pytest.raises(LmdiscError, match=r"layer_decay must be in \(0, 1\]"):
        optimizer_groups(tiny_gpt(), decay, 1.0)


def test_bad_finetune_options_are_refused():
    with pytest.raises(
        LmdiscError, match=r"finetune.n must be a whole number in 1..3 \(the model's depth\), got 4"
    ):
        plan_finetune(tiny_gpt(), {"mode": "last_n", "n": 4}, pretrained=True)
    with pytest.raises(
        LmdiscError, match=r"does not have; its Linear modules are \['c_attn', 'c_fc', 'c_proj'\]"
    ):
        plan_finetune(tiny_gpt(), {"mode": "lora", "lora": {"target_modules": ["q_proj"]}}, pretrained=True)
    with pytest.raises(LmdiscError, match="starts from random weights"):
        plan_finetune(tiny_gpt(), {"mode": "head"}, pretrained=False)
    with pytest.raises(LmdiscError, match=r"finetune\.mode must be one of"):
        plan_finetune(tiny_gpt(), {"mode": "adapters"}, pretrained=True)


def test_warmup_then_linear_decay_per_step():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    schedule = warmup_schedule(optimizer, total_steps=10, kind="linear", warmup_steps=4)
    rates = []
    for _ in range(10):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6])
    cosine = warmup_schedule(torch.optim.SGD([param], lr=1.0), total_steps=10, kind="cosine", warmup_steps=0)
    assert cosine.get_last_lr()[0] == 1.0
    for _ in range(5):
        cosine.optimizer.step()
        cosine.step()
    assert cosine.get_last_lr()[0] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))


def test_warmup_longer_than_the_run_is_refused():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(
        LmdiscError, match="warmup_steps=20 is not shorter than the run \\(10 optimiser steps\\)"
    ):
        warmup_schedule(optimizer, total_steps=10, warmup_steps=20)


def test_gradual_unfreezing_thaws_one_group_per_period_from_the_top():
    from types import SimpleNamespace

    from lmdisc.callbacks import GradualUnfreezing

    model = tiny_gpt()
    plan = plan_finetune(model, {"mode": "full", "unfreeze_every_n_epochs": 2}, pretrained=True)
    logged = {}
    module = SimpleNamespace(finetune_plan=plan, log=lambda k, v: logged.update({k: v}))
    callback = GradualUnfreezing(2)
    head = {id(p) for p in model.head_parameters()}
    top_block = {id(p) for p in model.h[-1].parameters()}
    for epoch, expected in [(0, head), (1, head), (2, head | top_block)]:
        callback.on_train_epoch_start(SimpleNamespace(current_epoch=epoch), module)
        assert {id(p) for p in model.parameters() if p.requires_grad} == expected
    callback.on_train_epoch_start(SimpleNamespace(current_epoch=20), module)
    assert all(p.requires_grad for p in model.parameters())
    assert logged["train/thawed_groups"] == float(L + 2)
