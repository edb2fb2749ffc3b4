"""Tokenizers: word boundaries, the reserved blank, BPE training and its cache, comparison by content."""

import json

import numpy as np
import pytest
import torch

from lmdisc.data.corpus import TokenizerSpec, count_words, load_corpus
from lmdisc.data.detokenize import detokenize_wikitext
from lmdisc.data.tokenizers import (
    BLANK,
    SubwordTokenizer,
    WordTokenizer,
    load_tokenizer,
    same_tokenizer_or_refuse,
    tokenizer_from_state,
    train_bpe,
    words_of_tokens,
)
from lmdisc.errors import LmdiscError

TRAIN = [" the cat sat on the mat ", " a dog @-@ like cat , barked . ", " the end "] * 20


def _corpus(directory, train=TRAIN):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "train.txt").write_text("\n".join(train) + "\n")
    (directory / "valid.txt").write_text(" the dog sat \n the cat , barked . \n")
    (directory / "test.txt").write_text(" a cat on the mat \n")
    return directory


def test_each_token_belongs_to_its_last_word_character_or_the_word_after_it():
    text = " ab cd\n e\n"
    # tokens: " a" | "b" | " " | "cd" | "\n" | " e" | "\n"
    starts = np.array([0, 2, 3, 4, 6, 7, 9])
    token_word, words = words_of_tokens(text, starts, np.append(starts[1:], len(text)))
    assert words == ["ab", "cd", "\n", "e", "\n"]
    assert token_word.tolist() == [0, 0, 1, 1, 2, 3, 4]
    # a token merging punctuation with the newline (Llama-3 style) ends the line
    token_word, words = words_of_tokens("Hi.\n", np.array([0, 2]), np.array([2, 4]))
    assert words == ["Hi.", "\n"] and token_word.tolist() == [0, 1]


def test_word_tokenizer_reserves_an_input_only_blank_and_round_trips_its_state():
    tokenizer = WordTokenizer.from_lines([" a b ", " b c "])
    assert tokenizer.words == ["a", "b", "<eos>", "c"]
    assert tokenizer.vocab_size == 4 and tokenizer.blank_id == 4 and tokenizer.input_only_tokens == 1
    again = tokenizer_from_state(json.loads(json.dumps(tokenizer.state())))
    assert again.words == tokenizer.words and again.fingerprint() == tokenizer.fingerprint()
    with pytest.raises(LmdiscError, match="reserved"):
        WordTokenizer(["a", BLANK])


def test_bpe_counts_whitespace_words_and_lines_and_decodes_back():
    tokenizer = train_bpe(TRAIN, 300)
    # at most 300 (a small corpus runs out of merges first); the blank is a reserved special token
    assert 256 < tokenizer.vocab_size <= 300 and tokenizer.backend.token_to_id(BLANK) == tokenizer.blank_id
    lines = [" the cat barked loudly , again . ", " zebra "]
    encoded = tokenizer.encode_lines(lines)
    assert int(encoded.word_end.sum()) == count_words(lines) == 10
    assert tokenizer.decode(encoded.ids.tolist()) == "\n".join(lines) + "\n"
    assert encoded.ids.numel() > 10  # unseen words are split into pieces, never <unk>


def test_bpe_is_cached_by_the_training_files_checksum(tmp_path):
    cache = tmp_path / "cache"
    spec = TokenizerSpec("bpe", 300)
    first = load_corpus(_corpus(tmp_path / "c"), spec, cache)
    assert len(list(cache.glob("bpe-*.pt"))) == 1
    again = load_corpus(tmp_path / "c", spec, cache)
    assert again.tokenizer.fingerprint() == first.tokenizer.fingerprint()
    _corpus(tmp_path / "c", [*TRAIN, " an entirely new line with new words "])
    changed = load_corpus(tmp_path / "c", spec, cache)
    assert len(list(cache.glob("bpe-*.pt"))) == 2
    assert changed.tokenizer.fingerprint() != first.tokenizer.fingerprint()


def test_bpe_needs_a_vocabulary_size(tmp_path):
    with pytest.raises(LmdiscError, match=r"data.vocab_size"):
        load_corpus(_corpus(tmp_path / "c"), TokenizerSpec("bpe", None))
    with pytest.raises(LmdiscError, match="too small"):
        load_corpus(tmp_path / "c", TokenizerSpec("bpe", 100))


def test_a_tokenizer_mismatch_is_refused_naming_both():
    word = WordTokenizer.from_lines(TRAIN)
    other = WordTokenizer([*word.words[1:], word.words[0]])
    with pytest.raises(
        LmdiscError, match=r"model A has another tokenizer than corpus B: word tokenizer .*word 0 is"
    ):
        same_tokenizer_or_refuse(word, other, "model A", "corpus B")
    bpe = train_bpe(TRAIN, 300)
    with pytest.raises(LmdiscError, match="bpe tokenizer"):
        same_tokenizer_or_refuse(word, bpe, "model A", "corpus B")
    same_tokenizer_or_refuse(bpe, SubwordTokenizer(bpe.json, "hf"), "a", "b")  # same content, other label


def test_tokenizers_load_from_our_file_a_hugging_face_file_or_a_directory(tmp_path):
    word = WordTokenizer.from_lines(TRAIN)
    word.save(tmp_path / "words.json")
    assert load_tokenizer(tmp_path / "words.json").words == word.words
    bpe = train_bpe(TRAIN, 300)
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "tokenizer.json").write_text(bpe.json)
    assert load_tokenizer(tmp_path / "hf").fingerprint() == bpe.fingerprint()
    (tmp_path / "junk.json").write_text("[1, 2]")
    with pytest.raises(LmdiscError, match="not a tokenizer file"):
        load_tokenizer(tmp_path / "junk.json")
    with pytest.raises(LmdiscError, match="does not exist"):
        load_tokenizer(tmp_path / "missing.json")


def test_wikitext_detokenizer_known_answers():
    assert detokenize_wikitext(" the well @-@ known 1 @,@ 000 cats . ") == " the well-known 1,000 cats. "
    assert (
        detokenize_wikitext(' he said " hi there " ( twice ) , it \'s fine ')
        == ' he said "hi there" (twice), it\'s fine '
    )
    assert detokenize_wikitext(" = = Plot = = ") == " == Plot == "
    assert detokenize_wikitext(" ") == " "


def test_detokenised_text_keeps_the_original_word_count(tmp_path):
    directory = _corpus(tmp_path / "c")
    plain = load_corpus(directory, TokenizerSpec("bpe", 300))
    detok = load_corpus(directory, TokenizerSpec("bpe", 300, detokenize=True))
    lines = (directory / "valid.txt").read_text().splitlines()
    for corpus in (plain, detok):
        assert float(corpus["valid"].word_weight.sum()) == pytest.approx(count_words(lines))
    # "cat ," and "barked ." became "cat," and "barked.": 8 words ended, each worth 10/8 original words
    assert sorted(set(detok["valid"].word_weight.tolist())) == [0.0, 1.25]
    assert set(plain["valid"].word_weight.tolist()) <= {0.0, 1.0}


def test_word_counts_per_token_come_from_the_training_split(tmp_path):
    corpus = load_corpus(_corpus(tmp_path / "c"), TokenizerSpec("bpe", 300))
    train_counts = {"the": 60, "dog": 20, "cat": 40, "\n": 60}
    encoded = corpus.tokenizer.encode_lines([" the dog sat ", " the cat , barked . "])
    counts = corpus["valid"].word_count
    ends = encoded.word_end.nonzero().flatten().tolist()
    first_word = corpus.tokenizer.word_text(encoded.ids[: ends[0] + 1].tolist())
    assert first_word == "the" and int(counts[ends[0]]) == train_counts["the"]
    assert torch.equal(corpus["valid"].ids, encoded.ids)


def test_subword_tokenizers_compare_by_content_not_formatting():
    bpe = train_bpe(TRAIN, 300)
    reformatted = json.dumps(json.loads(bpe.json), indent=2)
    assert SubwordTokenizer(reformatted, "bpe").fingerprint() == bpe.fingerprint()
    with pytest.raises(LmdiscError, match="not a valid tokenizer JSON"):
        SubwordTokenizer('{"model": {"type": "nonsense"}}')


def test_a_prompt_is_encoded_without_an_end_of_line():
    bpe = train_bpe(TRAIN, 300)
    assert bpe.decode(bpe.encode_text("the cat.")) == "the cat."
    assert bpe.decode(bpe.encode_text("")) == "\n"
    word = WordTokenizer.from_lines([*TRAIN, " <unk> "])
    assert word.encode_text("the zebra") == [word.index["the"], word.unk_id]
    assert word.encode_text("  ") == [word.eos_id]
