"""Reading a corpus directory (train/valid/test.txt) into token ids, with a checksum-keyed cache."""

from __future__ import annotations

import contextlib
import hashlib
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from lmdisc.errors import LmdiscError
from lmdisc.io import atomic_torch_save

from .detokenize import detokenize_wikitext
from .tokenizers import (
    BPE_RECIPE,
    Encoded,
    Tokenizer,
    WordTokenizer,
    load_tokenizer,
    tokenizer_from_state,
    train_bpe,
)

SPLITS = ("train", "valid", "test")
TOKENIZERS = ("word", "bpe", "hf")
CACHE_FORMAT = 2  # bump when what is cached changes


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_lines(path: Path) -> list[str]:
    """Read a UTF-8 text file, refusing missing, empty and non-UTF-8 files with a clear message."""
    return read_utf8_lines(
        path, str(path), f"corpus file not found: {path}", "a corpus split needs at least one word"
    )


def read_utf8_lines(path: Path, label: str, missing: str, empty: str) -> list[str]:
    """The lines of a UTF-8 text file; `label` names it in the refusals of a non-UTF-8 or empty (no
    word) file, `missing` is the whole refusal of a missing one, `empty` says what it needs."""
    path = Path(path)
    if not path.is_file():
        raise LmdiscError(missing)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise LmdiscError(
            f"{label} is not valid UTF-8 (bad byte at offset {err.start}); re-encode it as UTF-8"
        ) from None
    lines = text.splitlines()
    if not any(line.strip() for line in lines):
        raise LmdiscError(f"{label} is empty: {empty}")
    return lines


def count_words(lines: list[str]) -> int:
    """Words of a text as word-level perplexity counts them: whitespace words plus one end of line per line."""
    return sum(len(line.split()) + 1 for line in lines)


@dataclass
class TokenizedSplit:
    """One split as a token stream, with what word-level reports need per token.

    `word_weight[i]` is the number of words that token i ends: 1 at the last token of each word (and
    at each end of line), 0 elsewhere, scaled so the split's weights add up to the word count of
    the original text (it differs only under `data.detokenize`). Summed over the scored targets it
    is the denominator of word-level perplexity. `word_count[i]` is how often token i's word occurs
    in the training split (the frequency buckets).
    """

    ids: torch.Tensor  # [N] long
    word_weight: torch.Tensor  # [N] float32
    word_count: torch.Tensor  # [N] long
    unknown: int = 0

    def __len__(self) -> int:
        return self.ids.numel()

    def slice(self, start: int, stop: int | None = None) -> TokenizedSplit:
        part = slice(start, stop)
        return replace(
            self, ids=self.ids[part], word_weight=self.word_weight[part], word_count=self.word_count[part]
        )


@dataclass
class Corpus:
    """A tokenised corpus: its tokenizer and one token stream per split."""

    tokenizer: Tokenizer
    splits: dict[str, TokenizedSplit]
    checksums: dict[str, str]

    def __getitem__(self, split: str) -> TokenizedSplit:
        return self.splits[split]


@dataclass(frozen=True)
class TokenizerSpec:
    """How to get the tokenizer: built from the training split (`word`, `bpe` with `vocab_size`),
    or read from `source` (a checkpoint, a tokenizer file, a pretrained model's directory)."""

    kind: str = "word"
    vocab_size: int | None = None
    source: str | None = None
    detokenize: bool = False

    def key(self) -> str:
        return f"{self.kind}:{self.vocab_size}:{self.detokenize}"


def split_paths(directory: Path, file_names: dict[str, str] | None = None) -> dict[str, Path]:
    names = file_names or {s: f"{s}.txt" for s in SPLITS}
    return {split: Path(directory) / names[split] for split in SPLITS}


def check_corpus_dir(directory: Path, file_names: dict[str, str] | None = None) -> dict[str, Path]:
    """Fail early, naming the directory and every missing file."""
    paths = split_paths(directory, file_names)
    missing = [p.name for p in paths.values() if not p.is_file()]
    if missing:
        raise LmdiscError(
            f"corpus directory {directory} lacks {', '.join(missing)}; it must contain "
            f"{', '.join(p.name for p in paths.values())} (one sentence or paragraph per line)"
        )
    return paths


def _digest(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]


def _load_cached(path: Path | None) -> dict | None:
    if path is None or not path.is_file():
        return None
    try:
        return torch.load(path, weights_only=True)
    except Exception:  # a broken cache is rebuilt, never trusted
        return None


def _save_cached(payload: dict, path: Path | None) -> None:
    if path is not None:
        with contextlib.suppress(OSError):  # a read-only cache directory only costs us the cache
            atomic_torch_save(payload, path)


def _build_tokenizer(spec: TokenizerSpec, train_lines: list[str], train_sha: str, cache_dir: Path | None):
    if spec.source:
        return load_tokenizer(spec.source)
    if spec.kind == "word":
        return WordTokenizer.from_lines(train_lines)
    if spec.kind == "hf":
        raise LmdiscError(
            "data.tokenizer=hf reads a pretrained model's tokenizer: choose model=hf model.name_or_path=DIR "
            "(or model=smollm2_135m), or data.tokenizer_from=DIR; models trained here use word or bpe"
        )
    if spec.kind != "bpe":
        raise LmdiscError(f"data.tokenizer must be one of {list(TOKENIZERS)}, got {spec.kind!r}")
    if not isinstance(spec.vocab_size, int) or isinstance(spec.vocab_size, bool):
        raise LmdiscError(
            f"data.tokenizer=bpe needs data.vocab_size (a whole number), got {spec.vocab_size!r}"
        )
    path = Path(cache_dir) / f"bpe-{_digest(train_sha, spec.key(), BPE_RECIPE)}.pt" if cache_dir else None
    cached = _load_cached(path)
    if cached is not None and cached.get("train_sha256") == train_sha:
        return tokenizer_from_state(cached["tokenizer"])
    tokenizer = train_bpe(train_lines, spec.vocab_size)
    _save_cached({"train_sha256": train_sha, "tokenizer": tokenizer.state()}, path)
    return tokenizer


def _word_counts(encoded: dict[str, Encoded], tokenizer: Tokenizer) -> dict[str, torch.Tensor]:
    """Per token of each split, the training-split count of the word it belongs to."""
    train = encoded["train"]
    if train.words is None:  # word tokenizer: a token is a word
        counts = torch.bincount(train.ids, minlength=tokenizer.vocab_size + tokenizer.input_only_tokens)
        return {split: counts[enc.ids] for split, enc in encoded.items()}
    counter = Counter(train.words)
    result = {}
    for split, enc in encoded.items():
        per_word = np.fromiter((counter.get(w, 0) for w in enc.words), dtype=np.int64, count=len(enc.words))
        result[split] = torch.from_numpy(per_word[enc.token_word]) if len(enc.ids) else torch.zeros(0).long()
    return result


def tokenize_splits(lines: dict[str, list[str]], original_words: dict[str, int], tokenizer: Tokenizer):
    encoded = {split: tokenizer.encode_lines(lines[split], split) for split in lines}
    counts = _word_counts(encoded, tokenizer)
    splits = {}
    for split, enc in encoded.items():
        ends = enc.word_end.float()
        scale = original_words[split] / max(float(ends.sum()), 1.0)
        splits[split] = TokenizedSplit(enc.ids, ends * scale, counts[split], enc.unknown)
    return splits


def load_corpus(
    directory: Path,
    spec: TokenizerSpec | None = None,
    cache_dir: Path | None = None,
    file_names: dict[str, str] | None = None,
    tokenizer: Tokenizer | None = None,
) -> Corpus:
    """Tokenise a corpus directory; reuse a cache only if every file's sha256 and the tokenizer match.

    `tokenizer` (e.g. a checkpoint's) encodes the splits instead of the one `spec` describes.
    """
    spec = spec or TokenizerSpec()
    paths = check_corpus_dir(directory, file_names)
    checksums = {split: sha256_file(path) for split, path in paths.items()}
    corpus_key = "".join(checksums[s] for s in SPLITS)
    lines: dict[str, list[str]] | None = None

    def read() -> dict[str, list[str]]:
        nonlocal lines
        if lines is None:
            lines = {split: read_lines(path) for split, path in paths.items()}
        return lines

    if tokenizer is None and spec.kind == "word" and not spec.source:
        # the word list is a function of the training file: cache it with the corpus
        key = _digest(corpus_key, spec.key(), str(CACHE_FORMAT))
    else:
        if tokenizer is None:
            train = read()["train"]
            if spec.detokenize:
                train = [detokenize_wikitext(line) for line in train]
            tokenizer = _build_tokenizer(spec, train, checksums["train"], cache_dir)
        key = _digest(corpus_key, tokenizer.fingerprint(), str(spec.detokenize), str(CACHE_FORMAT))
    cache_file = Path(cache_dir) / f"corpus-{key}.pt" if cache_dir is not None else None
    cached = _load_cached(cache_file)
    if cached is not None and cached.get("checksums") == checksums:
        splits = {s: TokenizedSplit(**fields) for s, fields in cached["splits"].items()}
        return Corpus(tokenizer or tokenizer_from_state(cached["tokenizer"]), splits, checksums)
    original = read()
    words = {split: count_words(original[split]) for split in SPLITS}
    text = {s: [detokenize_wikitext(x) for x in original[s]] for s in SPLITS} if spec.detokenize else original
    tokenizer = tokenizer or WordTokenizer.from_lines(text["train"])
    splits = tokenize_splits(text, words, tokenizer)
    payload = {
        "checksums": checksums,
        "tokenizer": tokenizer.state(),
        "splits": {s: vars(split) for s, split in splits.items()},
    }
    _save_cached(payload, cache_file)
    return Corpus(tokenizer, splits, checksums)
