"""Ensembles (mixtures of next-token probabilities, EM weights) and feature extraction on tiny
in-memory models: known answers computed by hand or by the model's own layers."""

import math

import numpy as np
import pytest
import torch

from lmdisc.data.tokenizers import WordTokenizer
from lmdisc.ensemble import EnsembleLM, fit_weights, given_weights
from lmdisc.errors import LmdiscError
from lmdisc.features import extract_features, read_text_lines, write_features
from lmdisc.models.base import LanguageModelBase
from lmdisc.models.gpt import GPT
from lmdisc.models.lstm import LSTMLanguageModel
from lmdisc.window_loop import Reader

WORDS = ["<eos>", "<unk>", "the", "cat", "sat", "on", "a", "mat", "dog", "ran"]


class Fixed(LanguageModelBase):
    """The same logits at every position: a distribution fixed by hand."""

    carries_state = False

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.tensor(logits)
        self.vocab_size = len(logits)

    def forward(self, tokens, state=None):
        return self.logits.expand(*tokens.shape, -1), None, {}


def test_a_two_member_mixture_is_the_hand_computed_mixture_of_probabilities():
    # p1 = (0.5, 0.5), p2 = (0.75, 0.25); 0.4 p1 + 0.6 p2 = (0.65, 0.35): an average of logits would
    # give softmax(0.6 log 3, 0) = (0.659.., 0.340..) instead
    ensemble = EnsembleLM([Fixed([0.0, 0.0]), Fixed([math.log(3.0), 0.0])], [0.4, 0.6])
    log_probs, state, _ = ensemble(torch.zeros(2, 3, dtype=torch.long))
    assert torch.allclose(log_probs.exp(), torch.tensor([0.65, 0.35]).expand(2, 3, 2), atol=1e-7)
    assert torch.allclose(torch.log_softmax(log_probs, -1), log_probs, atol=1e-7)  # valid logits
    assert state == (None, None) and not ensemble.carries_state


def test_a_recurrent_ensemble_carries_every_members_state_across_windows():
    torch.manual_seed(0)
    members = [LSTMLanguageModel(10, 8, 8, 1).eval(), LSTMLanguageModel(10, 8, 8, 2).eval()]
    ensemble = EnsembleLM(members, [0.3, 0.7]).eval()
    tokens = torch.randint(0, 10, (2, 12))
    with torch.no_grad():
        whole = ensemble(tokens)[0]
        reader = Reader(ensemble, carry=ensemble.carries_state)
        parts = torch.cat([reader(tokens[:, :5])[0], reader(tokens[:, 5:])[0]], dim=1)
        expected = torch.logsumexp(
            torch.stack(
                [torch.log_softmax(m(tokens)[0], -1) + math.log(w) for m, w in zip(members, (0.3, 0.7))]
            ),
            dim=0,
        )
    assert ensemble.carries_state and torch.allclose(parts, whole, atol=1e-5)
    assert torch.allclose(whole, expected, atol=1e-6)


def test_members_of_different_vocabularies_are_refused():
    with pytest.raises(LmdiscError, match="different numbers of tokens"):
        EnsembleLM([Fixed([0.0, 0.0]), Fixed([0.0, 0.0, 0.0])])


def test_em_finds_the_maximum_likelihood_weights_of_a_known_case():
    # 3 tokens where the members give (0.8, 0.2) and 1 where they give (0.2, 0.8): the likelihood
    # 3 log(0.2 + 0.6 w) + log(0.8 - 0.6 w) peaks at w = 11/12
    probs = torch.tensor([[0.8, 0.2]] * 3 + [[0.2, 0.8]], dtype=torch.float64)
    weights, iterations = fit_weights(probs.log())
    assert weights[0] == pytest.approx(11 / 12, abs=1e-4) and sum(weights) == pytest.approx(1.0)
    assert 1 < iterations < 2000
    # a member that is never better than another gets (close to) no weight
    dominated = torch.tensor([[0.5, 0.1], [0.4, 0.3]], dtype=torch.float64).log()
    assert fit_weights(dominated)[0][0] > 0.99


def test_ensemble_weights_are_parsed_normalised_or_refused():
    assert given_weights("uniform", 4) == [0.25] * 4
    assert given_weights("fit", 2) == "fit"
    assert given_weights([1, 3], 2) == [0.25, 0.75]
    for bad in ("mean", [1.0], [1.0, -1.0], [0, 0], [1.0, float("nan")], [True, 1]):
        with pytest.raises(LmdiscError, match="ensemble_weights"):
            given_weights(bad, 2)


def _gpt(layers=2, block_size=16) -> GPT:
    torch.manual_seed(0)
    return GPT(
        len(WORDS), block_size=block_size, n_layer=layers, n_head=2, n_embd=16, input_only_tokens=1
    ).eval()


LINES = ["the cat sat on the mat", "a dog", "", "the dog ran on a mat the end"]


def test_features_pool_per_token_states_that_do_not_depend_on_other_lines():
    model, tokenizer = _gpt(), WordTokenizer(WORDS)
    out = extract_features(model, tokenizer, LINES, per_token=True)
    lengths = [len(line.split()) + 1 for line in LINES]  # words and the end of line
    assert out["features"].shape == (4, 16) and out["token_features"].shape == (sum(lengths), 16)
    assert out["offsets"].tolist() == np.cumsum([0, *lengths]).tolist()
    assert int(out["unknown_words"]) == 1  # "end"
    for i, (first, last) in enumerate(zip(out["offsets"][:-1], out["offsets"][1:])):
        assert np.allclose(out["features"][i], out["token_features"][first:last].mean(0), atol=1e-6)
        assert out["token_ids"][first:last].tolist() == tokenizer.encode_lines([LINES[i]]).ids.tolist()
        alone = extract_features(model, tokenizer, [LINES[i]])
        assert np.allclose(alone["features"][0], out["features"][i], atol=1e-5)
    # layer -1 is what model.features gives the line after one end of line
    ids = torch.tensor([[0, *tokenizer.encode_lines([LINES[0]]).ids.tolist()]])
    with torch.no_grad():
        expected = model.features(ids)[0][0, 1:]
    assert np.allclose(out["token_features"][: lengths[0]], expected.numpy(), atol=1e-5)


def test_a_layer_is_that_blocks_output_and_layers_out_of_range_are_refused():
    model, tokenizer = _gpt(), WordTokenizer(WORDS)
    out = extract_features(model, tokenizer, LINES[:1], layer=0, per_token=True)
    ids = torch.tensor([[0, *tokenizer.encode_lines(LINES[:1]).ids.tolist()]])
    with torch.no_grad():
        x = model.wte(ids) + model.wpe(torch.arange(ids.shape[1]))
        expected = model.h[0](x)[0, 1:]
    assert np.allclose(out["token_features"], expected.numpy(), atol=1e-5)
    assert not np.allclose(out["features"], extract_features(model, tokenizer, LINES[:1])["features"])
    with pytest.raises(LmdiscError, match="out of range: the model has 2 blocks"):
        extract_features(model, tokenizer, LINES, layer=2)
    with pytest.raises(LmdiscError, match="no stack of blocks"):
        extract_features(
            LSTMLanguageModel(len(WORDS), 8, 8, 1, input_only_tokens=1), tokenizer, LINES, layer=0
        )


def test_a_line_longer_than_the_context_is_read_in_consecutive_windows():
    model, tokenizer = _gpt(block_size=4), WordTokenizer(WORDS)
    line = "the cat sat on the mat a dog ran"  # 9 words + end of line, after 1 token of context
    out = extract_features(model, tokenizer, [line], per_token=True)
    ids = [0, *tokenizer.encode_lines([line]).ids.tolist()]
    with torch.no_grad():
        windows = [model.features(torch.tensor([ids[i : i + 4]]))[0][0] for i in range(0, len(ids), 4)]
    assert np.allclose(out["token_features"], torch.cat(windows)[1:].numpy(), atol=1e-5)
    # an LSTM reads the line whole: its per-token states are those of one pass
    lstm = LSTMLanguageModel(len(WORDS), 8, 8, 1, input_only_tokens=1).eval()
    with torch.no_grad():
        whole = lstm.features(torch.tensor([ids]))[0][0, 1:]
    assert np.allclose(
        extract_features(lstm, tokenizer, [line], per_token=True)["token_features"], whole, atol=1e-6
    )


def test_bad_features_files_are_refused_and_the_npz_is_written_whole(tmp_path):
    empty, latin = tmp_path / "empty.txt", tmp_path / "latin.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    latin.write_bytes("caf\u00e9\n".encode("latin-1"))
    with pytest.raises(LmdiscError, match="is empty"):
        read_text_lines(empty)
    with pytest.raises(LmdiscError, match="not valid UTF-8"):
        read_text_lines(latin)
    with pytest.raises(LmdiscError, match="does not exist"):
        read_text_lines(tmp_path / "missing.txt")
    out = write_features({"features": np.ones((2, 3), dtype=np.float32)}, tmp_path / "f.npz")
    assert (
        np.load(out)["features"].shape == (2, 3)
        and [p.name for p in tmp_path.iterdir() if "tmp" in p.name] == []
    )
