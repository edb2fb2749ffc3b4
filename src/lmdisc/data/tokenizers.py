"""Tokenizers: text to ids and back, and which token ends each word of the text.

Two kinds share one interface, so every model, loss and report works with either:
- `WordTokenizer`: the word list of the training split (PTB's and WikiText's standard vocabulary),
  one id per whitespace word, one `<eos>` per line, unknown words mapped to `<unk>`. It also
  reserves `<blank>` (data noising) as an *input-only* id just past the predicted ids, so the
  softmax stays over the words alone and word-level numbers do not move.
- `SubwordTokenizer`: a Hugging Face `tokenizers` model, either a byte-level BPE trained on the
  training split (`bpe`) or a pretrained model's own (`hf`). Each line is encoded with its newline.

Both say, per token, whether it ends a word (`word_end`). A word is a whitespace-separated word of
the text plus one end-of-line per line, so any tokenizer's total NLL over the words gives a
word-level perplexity that compares with word-level models. A checkpoint stores `state()`
(primitives only); tokenizers are compared by `fingerprint()` (their content), never by name.
"""

from __future__ import annotations

import functools
import hashlib
import json
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lmdisc.errors import LmdiscError

EOS = "<eos>"
UNK = "<unk>"
BLANK = "<blank>"
# special tokens of the BPE tokenizers trained here: an end-of-text and the noising blank
BPE_SPECIALS = ("<|endoftext|>", BLANK)
BPE_RECIPE = "byte-level-v1"  # bump when train_bpe changes: cached BPEs of another recipe are not reused


@dataclass
class Encoded:
    """Token ids of a text, which of them end a word, and how many words were unknown (`<unk>`).

    Subword tokenizers also give the text's words and each token's word (an index into them); for a
    word tokenizer every token is its own word (`words` is None).
    """

    ids: torch.Tensor  # [N] long
    word_end: torch.Tensor  # [N] bool
    unknown: int = 0
    words: list[str] | None = None
    token_word: np.ndarray | None = None


class Tokenizer(ABC):
    """ids 0 .. vocab_size-1 are predicted; ids from vocab_size on (`input_only_tokens` of them) are
    only ever read (a word tokenizer's blank)."""

    kind: str
    vocab_size: int
    input_only_tokens: int = 0
    blank_id: int

    @abstractmethod
    def encode_lines(self, lines: Sequence[str]) -> Encoded: ...

    @abstractmethod
    def encode_text(self, text: str) -> list[int]:
        """A piece of text without the end of line that `encode_lines` adds (a prompt); empty text is
        an end of line."""

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str: ...

    @abstractmethod
    def state(self) -> dict:
        """Primitives only (a word list, or the tokenizer's JSON): what a checkpoint stores."""

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.state(), sort_keys=True).encode()).hexdigest()

    def describe(self) -> str:
        return f"{self.kind} tokenizer ({self.vocab_size:,} tokens, sha256 {self.fingerprint()[:12]})"

    def word_text(self, ids: Sequence[int]) -> str:
        """The text of one word from its tokens (for per-word tables)."""
        return self.decode(ids).strip() or "<eol>"

    def save(self, path: Path) -> None:
        from lmdisc.io import atomic_write_text

        atomic_write_text(json.dumps(self.state()), Path(path))


class WordTokenizer(Tokenizer):
    """Word ids in order of first appearance in the training split (as pytorch/examples builds them)."""

    kind = "word"
    input_only_tokens = 1

    def __init__(self, words: Sequence[str]):
        self.words = list(words)
        self.index = {w: i for i, w in enumerate(self.words)}
        if len(self.index) != len(self.words):
            raise LmdiscError("the word list has duplicate words")
        if BLANK in self.index:
            raise LmdiscError(f"{BLANK} is reserved by the word tokenizer and cannot be a word of the corpus")
        self.vocab_size = len(self.words)
        self.blank_id = self.vocab_size
        self.eos_id = self.index.get(EOS)
        self.unk_id = self.index.get(UNK)

    @classmethod
    def from_lines(cls, lines: Sequence[str]) -> WordTokenizer:
        counts: Counter[str] = Counter()
        for line in lines:
            counts.update(line.split())
            counts[EOS] += 1
        return cls(list(counts))

    def __len__(self) -> int:
        return self.vocab_size

    def __contains__(self, word: str) -> bool:
        return word in self.index

    def encode_lines(self, lines: Sequence[str], source: str = "text") -> Encoded:
        """Words -> ids with one <eos> per line; unknown words map to <unk> and are counted."""
        ids: list[int] = []
        unknown = 0
        for line in lines:
            for word in line.split():
                idx = self.index.get(word)
                if idx is None:
                    if self.unk_id is None:
                        raise LmdiscError(
                            f"word {word!r} in {source} is not in the vocabulary and the vocabulary has no "
                            f"{UNK}; build the vocabulary from a file that covers it"
                        )
                    idx = self.unk_id
                    unknown += 1
                ids.append(idx)
            ids.append(self.eos_id)
        tensor = torch.tensor(ids, dtype=torch.long)
        return Encoded(tensor, torch.ones(len(ids), dtype=torch.bool), unknown)

    def encode_text(self, text: str) -> list[int]:
        if not text.split():
            return [self.eos_id]
        return [
            self.index.get(word, self.unk_id if self.unk_id is not None else self.eos_id)
            for word in text.split()
        ]

    def decode(self, ids: Sequence[int]) -> str:
        words = [BLANK if i == self.blank_id else self.words[i] for i in ids]
        return " ".join(words).replace(f" {EOS} ", "\n").replace(EOS, "\n")

    def word_text(self, ids: Sequence[int]) -> str:
        return self.words[ids[0]] if ids[0] < self.vocab_size else BLANK

    def state(self) -> dict:
        return {"kind": "word", "words": self.words}


class SubwordTokenizer(Tokenizer):
    """A `tokenizers.Tokenizer` (its JSON is the state). `kind` is `bpe` (trained here) or `hf`."""

    def __init__(self, tokenizer_json: str, kind: str = "hf"):
        from tokenizers import Tokenizer as HFTokenizer

        self.kind = kind
        self.json = tokenizer_json
        try:
            self.backend = HFTokenizer.from_str(tokenizer_json)
        except Exception as err:  # the Rust library raises its own exception types
            raise LmdiscError(f"not a valid tokenizer JSON ({str(err).splitlines()[0][:200]})") from None
        self.vocab_size = self.backend.get_vocab_size(with_added_tokens=True)
        self.blank_id = self._reserved_blank()

    def _reserved_blank(self) -> int:
        """`<blank>` where the tokenizer has it (ours), else its unknown or end-of-text token."""
        for token in (BLANK, UNK, "<|endoftext|>", "</s>", "<eos>"):
            idx = self.backend.token_to_id(token)
            if idx is not None:
                return idx
        return self.vocab_size - 1

    def encode_lines(self, lines: Sequence[str], source: str = "text", chunk: int = 20_000) -> Encoded:
        """Each line with its newline; `chunk` lines at a time (no word spans a line), so the
        per-character work stays small on a corpus of any size."""
        ids, ends, words, token_word = [], [], [], []
        for first in range(0, len(lines), chunk):
            texts = [line + "\n" for line in lines[first : first + chunk]]
            encodings = self.backend.encode_batch(texts, add_special_tokens=False)
            line_start = np.cumsum([0] + [len(t) for t in texts[:-1]], dtype=np.int64)
            spans = np.array(
                [(base + a, base + b) for e, base in zip(encodings, line_start) for a, b in e.offsets],
                dtype=np.int64,
            ).reshape(-1, 2)
            part_of, part_words = words_of_tokens("".join(texts), spans[:, 0], spans[:, 1])
            ids.append(np.fromiter((i for e in encodings for i in e.ids), dtype=np.int64))
            ends.append(np.append(part_of[1:] != part_of[:-1], True) if len(part_of) else np.zeros(0, bool))
            token_word.append(part_of + len(words))
            words.extend(part_words)
        if not ids:
            return Encoded(
                torch.zeros(0, dtype=torch.long),
                torch.zeros(0, dtype=torch.bool),
                0,
                [],
                np.zeros(0, np.int64),
            )
        return Encoded(
            torch.from_numpy(np.concatenate(ids)),
            torch.from_numpy(np.concatenate(ends)),
            0,
            words,
            np.concatenate(token_word),
        )

    def encode_text(self, text: str) -> list[int]:
        return self.backend.encode(text or "\n", add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=False)

    def state(self) -> dict:
        return {"kind": self.kind, "json": self.json}

    def save(self, path: Path) -> None:
        """As a Hugging Face `tokenizer.json`, which other tools read too."""
        from lmdisc.io import atomic_write_text

        atomic_write_text(self.json, Path(path))

    @functools.cached_property
    def _content_sha256(self) -> str:
        canonical = json.dumps(json.loads(self.json), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def fingerprint(self) -> str:
        """Of the JSON's content (key order and formatting aside), parsed once; the kind is a label."""
        return self._content_sha256


def words_of_tokens(text: str, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Each token's word (an index into the returned word list), from the tokens' character spans
    [start, end) in `text`.

    A word is a maximal run of non-whitespace characters, and each newline is a word of its own
    (the end of a line). A token belongs to the last word character inside its span; one with
    none (a bare space) belongs to the word that follows it. So "Ġthe" is "the", and a token that
    merges punctuation with the newline (".\n", as Llama-3-style tokenizers make) ends the line.
    """
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    size = len(codes)
    spaces = np.array([ord(c) for c in set(text) if c.isspace() and c != "\n"], dtype=np.uint32)
    newline = codes == ord("\n")
    is_word = ~np.isin(codes, spaces)
    before = np.concatenate([[False], is_word[:-1]])
    after_newline = np.concatenate([[False], newline[:-1]])
    word_starts = is_word & (~before | newline | after_newline)
    after = np.concatenate([is_word[1:], [False]])
    next_newline = np.concatenate([newline[1:], [False]])
    word_stops = is_word & (~after | newline | next_newline)
    word_at = np.append(np.cumsum(word_starts) - 1, int(word_starts.sum()))
    position = np.arange(size)
    next_word_char = np.minimum.accumulate(np.append(np.where(is_word, position, size), size)[::-1])[::-1]
    last_word_char = np.maximum.accumulate(np.where(is_word, position, -1)) if size else position
    starts = np.clip(starts, 0, size)
    inside = last_word_char[np.clip(ends - 1, 0, max(size - 1, 0))] if size else starts
    char = np.where((ends > starts) & (inside >= starts), inside, next_word_char[starts])
    words = [text[a : b + 1] for a, b in zip(np.flatnonzero(word_starts), np.flatnonzero(word_stops))]
    return word_at[char], words


def train_bpe(lines: Sequence[str], vocab_size: int) -> SubwordTokenizer:
    """A byte-level BPE (GPT-2's layout) trained on `lines`, with `BPE_SPECIALS` reserved."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    if vocab_size < 256 + len(BPE_SPECIALS):
        raise LmdiscError(
            f"data.vocab_size={vocab_size} is too small for a byte-level BPE (at least "
            f"{256 + len(BPE_SPECIALS)}: 256 bytes and {len(BPE_SPECIALS)} special tokens)"
        )
    backend = HFTokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(BPE_SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator((line + "\n" for line in lines), trainer=trainer, length=len(lines))
    return SubwordTokenizer(backend.to_str(), kind="bpe")


def tokenizer_from_state(state: dict) -> Tokenizer:
    """Rebuild a tokenizer from `Tokenizer.state()` (a checkpoint's `lmdisc.tokenizer`)."""
    if state.get("kind") == "word":
        return WordTokenizer(state["words"])
    if "json" in state:
        return SubwordTokenizer(state["json"], state.get("kind", "hf"))
    raise LmdiscError(f"unknown tokenizer state (kind {state.get('kind')!r})")


def load_tokenizer(source: str | Path) -> Tokenizer:
    """`data.tokenizer_from`: an lmdisc checkpoint, a saved tokenizer file (ours or a Hugging Face
    `tokenizer.json`), or a pretrained model's directory holding `tokenizer.json`."""
    path = Path(source).expanduser()
    if path.is_dir():
        path = path / "tokenizer.json"
        if not path.is_file():
            raise LmdiscError(f"data.tokenizer_from={source} is a directory without tokenizer.json")
    if not path.is_file():
        raise LmdiscError(f"data.tokenizer_from={source} does not exist")
    head = path.read_bytes()[:4]
    if head.startswith(b"PK"):  # a torch checkpoint (zip)
        from lmdisc.checkpoint import checkpoint_tokenizer, load_checkpoint

        return checkpoint_tokenizer(load_checkpoint(path))
    try:
        text = path.read_text(encoding="utf-8")
        state = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise LmdiscError(
            f"data.tokenizer_from={source} is neither an lmdisc checkpoint nor a tokenizer JSON file"
        ) from None
    if isinstance(state, dict) and ("words" in state or "json" in state):
        return tokenizer_from_state(state)
    if isinstance(state, dict) and "model" in state:  # a Hugging Face tokenizer.json
        return SubwordTokenizer(text, kind="hf")
    raise LmdiscError(f"data.tokenizer_from={source}: not a tokenizer file this code knows")


DEFAULT_HINT = "pass data.tokenizer_from=<the checkpoint> to read the text with the checkpoint's tokenizer"


def same_tokenizer_or_refuse(
    ours: Tokenizer, theirs: Tokenizer, ours_name: str, theirs_name: str, hint: str = DEFAULT_HINT
) -> None:
    """Refuse two tokenizers that differ in content, naming both: the same id would mean different text."""
    if ours.fingerprint() == theirs.fingerprint():
        return
    detail = ""
    if isinstance(ours, WordTokenizer) and isinstance(theirs, WordTokenizer):
        detail = f" ({word_list_difference(ours.words, theirs.words, ours_name, theirs_name)})"
    raise LmdiscError(
        f"{ours_name} has another tokenizer than {theirs_name}: {ours.describe()} vs {theirs.describe()}{detail}; "
        f"{hint}"
    )


def word_list_difference(first: list[str], second: list[str], first_name: str, second_name: str) -> str:
    """The first way two word lists differ, for an error message ('' when they are equal)."""
    if first == second:
        return ""
    if len(first) != len(second):
        return f"{len(first):,} words in {first_name}, {len(second):,} in {second_name}"
    i = next(i for i, (a, b) in enumerate(zip(first, second)) if a != b)
    return f"word {i} is {first[i]!r} in {first_name} but {second[i]!r} in {second_name}"
