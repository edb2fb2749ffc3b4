import pytest
import torch

from lmdisc.models import (
    AWDLSTM,
    LockedDropout,
    LSTMLanguageModel,
    WeightDrop,
    detach_state,
    embedding_dropout,
)

V = 50


def _tiny_awd(**kw):
    args = dict(emb_size=8, hidden_size=12, num_layers=3, wdrop=0.5)
    args.update(kw)
    return AWDLSTM(V, **args)


@pytest.mark.parametrize("make", [lambda: LSTMLanguageModel(V, 8, 8, 2), lambda: _tiny_awd()])
def test_forward_interface_and_state_carry(make):
    model = make().eval()
    tokens = torch.randint(0, V, (3, 7))
    logits, _state, extras = model(tokens)
    assert logits.shape == (3, 7, V)
    assert isinstance(extras, dict)
    # carrying the state over two windows equals one pass over the whole sequence
    first, state1, _ = model(tokens[:, :4])
    second, _, _ = model(tokens[:, 4:], detach_state(state1))
    torch.testing.assert_close(torch.cat([first, second], 1), logits)


def test_weight_drop_is_deterministic_in_eval_and_random_in_training():
    torch.manual_seed(0)
    layer = WeightDrop(torch.nn.LSTM(4, 6, batch_first=True), ["weight_hh_l0"], p=0.5)
    x = torch.randn(2, 5, 4)
    layer.eval()
    torch.testing.assert_close(layer(x)[0], layer(x)[0])
    torch.testing.assert_close(layer(x)[0], layer.module(x)[0])
    layer.train()
    a, b = layer(x)[0], layer(x)[0]
    assert not torch.allclose(a, b)
    # gradients reach the raw Parameter, which stays a registered Parameter
    a.sum().backward()
    assert layer.module.weight_hh_l0.grad is not None
    assert "module.weight_hh_l0" in dict(layer.named_parameters())


def test_locked_dropout_shares_one_mask_over_time():
    drop = LockedDropout(0.5).train()
    out = drop(torch.ones(4, 9, 16))
    assert torch.equal(out, out[:, :1].expand_as(out))
    assert (out == 0).any() and (out == 2).any()
    assert torch.equal(drop.eval()(torch.ones(2, 3, 4)), torch.ones(2, 3, 4))


def test_embedding_dropout_drops_whole_words():
    torch.manual_seed(1)
    emb = torch.nn.Embedding(V, 6)
    tokens = torch.arange(V).repeat(2, 1)
    out = embedding_dropout(emb, tokens, 0.5)
    zero_rows = (out == 0).all(-1)
    assert torch.equal(zero_rows[0], zero_rows[1])  # a dropped word is dropped everywhere
    assert 0 < zero_rows[0].sum() < V


@pytest.mark.parametrize("model", [LSTMLanguageModel(V, 8, 8, 2, tie_weights=True), _tiny_awd()])
def test_tied_weights_share_storage(model):
    assert model.decoder.weight.data_ptr() == model.embedding.weight.data_ptr()
    n_unique = len({p.data_ptr() for p in model.parameters()})
    assert n_unique == len(list(model.parameters()))  # parameters() lists the shared tensor once


def test_awd_regularization_is_ar_plus_tar():
    model = _tiny_awd(alpha=2.0, beta=1.0).train()
    _, _, extras = model(torch.randint(0, V, (2, 6)))
    dropped, raw = extras["dropped_output"], extras["raw_output"]
    expected = 2.0 * dropped.pow(2).mean() + (raw[:, 1:] - raw[:, :-1]).pow(2).mean()
    torch.testing.assert_close(model.regularization_loss(extras), expected)
    assert LSTMLanguageModel(V, 4, 4, 1).regularization_loss({}) is None


def test_untied_sizes_checked():
    with pytest.raises(ValueError, match="tie_weights"):
        LSTMLanguageModel(V, 8, 16, tie_weights=True)


@pytest.mark.parametrize("make", [lambda: LSTMLanguageModel(V, 8, 8, 2), lambda: _tiny_awd()])
def test_the_recurrent_core_follows_autocast_unless_its_device_keeps_fp32(make, monkeypatch):
    """benchmarks/lstm_core.py found the bf16 core faster on CPU, so autocast runs it in bf16 there;
    a device in FP32_CORE_DEVICES gets the fp32 core (and an fp32 carried state)."""
    from lmdisc.models import base

    model = make().eval()
    tokens = torch.randint(0, V, (2, 5))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        _, state, _ = model(tokens)
        assert torch.cat([s.flatten() for s in _flatten(state)]).dtype == torch.bfloat16
        monkeypatch.setattr(base, "FP32_CORE_DEVICES", {"cpu"})
        _, state32, _ = model(tokens, state)  # a carried bf16 state is accepted by the fp32 core
        assert all(s.dtype == torch.float32 for s in _flatten(state32))


def _flatten(state):
    if isinstance(state, torch.Tensor):
        return [state]
    return [t for s in state for t in _flatten(s)]
