"""Sampling helpers: the prompt's tokens and the top-k / nucleus cut (known answers)."""

import torch

from lmdisc.data.tokenizers import WordTokenizer, train_bpe
from lmdisc.generation import choose_next, generate, prompt_ids
from lmdisc.models import GPT, LSTMLanguageModel


def test_the_prompt_loses_only_the_end_of_line_that_encoding_a_line_adds():
    word = WordTokenizer.from_lines([" a b c "])
    assert prompt_ids(word, "a b") == [0, 1] and prompt_ids(word, "") == [word.eos_id]
    bpe = train_bpe([" the cat sat on the mat "] * 20, 280)
    ids = prompt_ids(bpe, "the cat")
    assert bpe.decode(ids) == "the cat"


def test_greedy_top_k_and_nucleus_keep_the_right_tokens():
    logits = torch.tensor([0.0, 3.0, 2.9, -1.0])
    generator = torch.Generator().manual_seed(0)
    assert choose_next(logits, 0.0, None, None, generator) == 1
    assert {choose_next(logits, 1.0, 1, None, generator) for _ in range(20)} == {1}
    assert {choose_next(logits, 1.0, 2, None, generator) for _ in range(50)} == {1, 2}
    # p = [0.02, 0.51, 0.46, 0.01]: a 0.4 nucleus is the top token alone, 0.9 adds the second
    assert {choose_next(logits, 1.0, None, 0.4, generator) for _ in range(20)} == {1}
    assert {choose_next(logits, 1.0, None, 0.9, generator) for _ in range(50)} == {1, 2}


def test_generation_carries_an_lstm_state_and_rereads_a_transformer_context():
    torch.manual_seed(0)
    for model in (
        LSTMLanguageModel(30, 8, 8),
        GPT(vocab_size=30, block_size=8, n_layer=1, n_head=2, n_embd=16),
    ):
        first = generate(model, [1, 2, 3], 12, temperature=1.0, seed=5)
        assert first == generate(model, [1, 2, 3], 12, temperature=1.0, seed=5)
        assert len(first) == 12 and all(0 <= t < 30 for t in first)
