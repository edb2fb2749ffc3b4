"""eval.py's ensembles and feature extraction on the session's tiny checkpoints."""

import json

import numpy as np
import pytest
import torch

from helpers import compose_train, quick_overrides
from lmdisc.checkpoint import build_model, load_checkpoint
from lmdisc.cli.eval import evaluate
from lmdisc.cli.train import train
from lmdisc.errors import LmdiscError


def _eval(tmp_path, overrides):
    return evaluate(
        compose_train(tmp_path, [*overrides, f"metrics_file={tmp_path / 'metrics.json'}"], "eval")
    )


@pytest.fixture(scope="module")
def lstm_ckpt(trained_run):
    return trained_run[0] / "checkpoints" / "best.ckpt"


@pytest.fixture(scope="module")
def uniform_ckpt(lstm_ckpt, tmp_path_factory):
    """The LSTM with its output layer zeroed: every next token has probability 1/V."""
    ckpt = torch.load(lstm_ckpt, weights_only=True)
    for name in ("model.decoder.weight", "model.decoder.bias"):
        ckpt["state_dict"][name] = torch.zeros_like(ckpt["state_dict"][name])
    ckpt.pop("averaged_state_dict", None)
    path = tmp_path_factory.mktemp("uniform") / "uniform.ckpt"
    torch.save(ckpt, path)
    return path


def test_a_model_ensembled_with_itself_is_the_model(lstm_ckpt, tiny_corpus, tmp_path):
    alone = _eval(tmp_path / "alone", [f"ckpt={lstm_ckpt}"])
    twice = _eval(tmp_path / "twice", [f"ensemble=[{lstm_ckpt},{lstm_ckpt}]"])
    for key in ("val/ppl", "test/ppl", "test/word_ppl"):
        assert twice[key] == pytest.approx(alone[key], rel=1e-6)
    assert twice["protocol"] == alone["protocol"] and twice["protocol"].startswith("stream")
    assert [m["ppl"] for m in twice["test/members"]] == pytest.approx([alone["test/ppl"]] * 2, rel=1e-6)
    assert twice["weights"] == [0.5, 0.5] and twice["ensemble"] == [str(lstm_ckpt)] * 2
    buckets = {r["bucket"]: r["ppl"] for r in twice["buckets"]["test"]}
    assert buckets == pytest.approx({r["bucket"]: r["ppl"] for r in alone["buckets"]["test"]}, rel=1e-6)
    # scoring a file reads it through the ensemble's forward (the log of the mixture)
    scored = _eval(
        tmp_path / "score",
        [
            f"ensemble=[{lstm_ckpt},{lstm_ckpt}]",
            f"score_file={tiny_corpus / 'test.txt'}",
            "ensemble_weights=[1,3]",
        ],
    )
    assert scored["ppl"] == pytest.approx(alone["test/ppl"], rel=1e-5)


def test_fitted_weights_favour_the_good_member_and_never_lose_to_uniform(lstm_ckpt, uniform_ckpt, tmp_path):
    run = [f"ensemble=[{lstm_ckpt},{uniform_ckpt}]"]
    fit = _eval(tmp_path / "fit", [*run, "ensemble_weights=fit"])
    uniform = _eval(tmp_path / "uniform", [*run, "splits=[valid]"])
    vocab = build_model(load_checkpoint(lstm_ckpt)).vocab_size
    good, flat = fit["val/members"]
    assert flat["ppl"] == pytest.approx(vocab, rel=1e-6)  # known answer: the zeroed model is uniform (fp32)
    assert fit["weights"][0] > 0.5 and sum(fit["weights"]) == pytest.approx(1.0)
    # EM from uniform weights never lowers the validation likelihood; its optimum is at least as
    # good as either member alone (a vertex of the simplex)
    choice = fit["weights_choice"]
    assert choice["mode"] == "fit" and choice["val_loss_fit"] == pytest.approx(fit["val/loss"], rel=1e-12)
    assert fit["val/loss"] <= min(uniform["val/loss"], good["loss"]) + 1e-9
    assert uniform["val/loss"] == pytest.approx(choice["val_loss_uniform"], rel=1e-12)
    written = json.loads((tmp_path / "fit" / "metrics.json").read_text())
    assert written["weights"] == fit["weights"] and len(written["test/members"]) == 2
    # the given weights (normalised) reproduce the fitted run
    given = f"ensemble_weights=[{fit['weights'][0]},{fit['weights'][1]}]"
    again = _eval(tmp_path / "given", [*run, given, "splits=[test]"])
    assert again["test/ppl"] == pytest.approx(fit["test/ppl"], rel=1e-9)


def test_an_lstm_and_a_transformer_on_one_word_tokenizer_mix_by_blocks(lstm_ckpt, tiny_corpus, tmp_path):
    overrides = [
        *quick_overrides(tiny_corpus, "gpt"),
        *("model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.block_size=32"),
        *("data.block_size=32", "trainer.max_epochs=1", "trainer.limit_train_batches=5", "logger=none"),
    ]
    train(compose_train(tmp_path / "gpt", overrides))
    gpt_ckpt = tmp_path / "gpt" / "run" / "checkpoints" / "last.ckpt"
    mixed = _eval(tmp_path / "mixed", [f"ensemble=[{lstm_ckpt},{gpt_ckpt}]", "splits=[test]"])
    # the transformer's recorded data config chooses the windows; the LSTM restarts in each one
    assert mixed["protocol"].startswith("blocks protocol (context 32")
    losses = [m["loss"] for m in mixed["test/members"]]
    # per token, -log(Σ w p) <= Σ w (-log p) (Jensen) and <= -log p_k - log w_k
    assert mixed["test/loss"] <= sum(losses) / 2 + 1e-9
    assert mixed["test/loss"] <= min(losses) + np.log(2) + 1e-9


def test_members_with_other_tokenizers_are_refused_by_name(lstm_ckpt, gpt_run, tmp_path):
    with pytest.raises(
        LmdiscError, match=rf"ensemble member {gpt_run['lm_ckpt']} has another tokenizer"
    ) as err:
        _eval(tmp_path, [f"ensemble=[{lstm_ckpt},{gpt_run['lm_ckpt']}]"])
    assert str(lstm_ckpt) in str(err.value)
    with pytest.raises(LmdiscError, match="either ckpt=PATH or ensemble"):
        _eval(tmp_path, [f"ckpt={lstm_ckpt}", f"ensemble=[{lstm_ckpt}]"])


def test_eval_writes_features_of_a_checkpoint(lstm_ckpt, tiny_corpus, tmp_path):
    out = tmp_path / "features.npz"
    base = [f"ckpt={lstm_ckpt}", f"features_file={tiny_corpus / 'test.txt'}", f"features_out={out}"]
    summary = evaluate(compose_train(tmp_path, [*base, "features_per_token=true"], "eval"))
    lines = (tiny_corpus / "test.txt").read_text().splitlines()
    arrays = np.load(out)
    assert arrays["features"].shape == (len(lines), 200) == (summary["lines"], summary["size"])
    assert (
        arrays["offsets"][-1] == arrays["token_features"].shape[0] == sum(len(x.split()) + 1 for x in lines)
    )
    first = arrays["token_features"][arrays["offsets"][0] : arrays["offsets"][1]]
    assert np.allclose(arrays["features"][0], first.mean(0), atol=1e-6)
    with pytest.raises(LmdiscError, match="features_layer=0: LSTMLanguageModel has no stack of blocks"):
        evaluate(compose_train(tmp_path, [*base, "features_layer=0"], "eval"))
    with pytest.raises(LmdiscError, match="features_layer must be a whole number >= -1"):
        evaluate(compose_train(tmp_path, [*base, "features_layer=-2"], "eval"))
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe not text\n")
    with pytest.raises(LmdiscError, match="not valid UTF-8"):
        evaluate(compose_train(tmp_path, [*base[:1], f"features_file={bad}", f"features_out={out}"], "eval"))


def test_features_of_a_pretrained_model_match_its_own_hidden_states(tiny_hf_models, tmp_path):
    from lmdisc.data.tokenizers import load_tokenizer
    from lmdisc.models.hf import HFCausalLM

    text = tmp_path / "text.txt"
    text.write_text("the market rose\nshares fell sharply today\n", encoding="utf-8")
    model = ["model=hf", f"model.name_or_path={tiny_hf_models['llama']}"]
    out = tmp_path / "f.npz"
    evaluate(
        compose_train(
            tmp_path,
            [
                *model,
                f"features_file={text}",
                f"features_out={out}",
                "features_layer=0",
                "features_per_token=true",
            ],
            "eval",
        )
    )
    arrays = np.load(out)
    tokenizer = load_tokenizer(str(tiny_hf_models["llama"]))
    hf = HFCausalLM(tokenizer.vocab_size, str(tiny_hf_models["llama"])).eval()
    context = tokenizer.encode_lines([""]).ids.tolist()
    ids = torch.tensor([context + tokenizer.encode_lines(["the market rose"]).ids.tolist()])
    with torch.no_grad():
        states = hf.hf(input_ids=ids, output_hidden_states=True).hidden_states
    # transformers' hidden_states[1] is the first decoder layer's output
    expected = states[1][0, len(context) :].numpy()
    assert np.allclose(arrays["token_features"][: arrays["offsets"][1]], expected, atol=1e-5)
    with pytest.raises(LmdiscError, match="out of range: the model has 2 blocks"):
        evaluate(
            compose_train(
                tmp_path, [*model, f"features_file={text}", f"features_out={out}", "features_layer=2"], "eval"
            )
        )
