"""Reading a corpus directory (train/valid/test.txt) into id tensors, with a checksum-keyed cache."""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from lmdisc.errors import LmdiscError
from lmdisc.io import atomic_torch_save

from .vocab import Vocabulary

SPLITS = ("train", "valid", "test")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_lines(path: Path) -> list[str]:
    """Read a UTF-8 text file, refusing missing, empty and non-UTF-8 files with a clear message."""
    path = Path(path)
    if not path.is_file():
        raise LmdiscError(f"corpus file not found: {path}")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise LmdiscError(
            f"{path} is not valid UTF-8 (bad byte at offset {err.start}); re-encode it as UTF-8"
        ) from None
    lines = text.splitlines()
    if not any(line.strip() for line in lines):
        raise LmdiscError(f"{path} is empty: a corpus split needs at least one word")
    return lines


def encode_lines(lines: list[str], vocab: Vocabulary, source: str = "text") -> tuple[torch.Tensor, int]:
    """Words -> ids with one <eos> per line; unknown words map to <unk> and are counted.

    Returns the id tensor and the number of words that were mapped to <unk>.
    """
    ids: list[int] = []
    unknown = 0
    unk_id = vocab.unk_id
    eos = vocab.eos_id
    for line in lines:
        for word in line.split():
            idx = vocab.index.get(word)
            if idx is None:
                if unk_id is None:
                    raise LmdiscError(
                        f"word {word!r} in {source} is not in the vocabulary and the vocabulary "
                        "has no <unk>; build the vocabulary from a file that covers it"
                    )
                idx = unk_id
                unknown += 1
            ids.append(idx)
        ids.append(eos)
    return torch.tensor(ids, dtype=torch.long), unknown


@dataclass
class Corpus:
    """A tokenised corpus: the vocabulary (from train) and one id stream per split."""

    vocab: Vocabulary
    splits: dict[str, torch.Tensor]
    checksums: dict[str, str]

    def __getitem__(self, split: str) -> torch.Tensor:
        return self.splits[split]


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


def load_corpus(
    directory: Path,
    cache_dir: Path | None = None,
    file_names: dict[str, str] | None = None,
    vocab: Vocabulary | None = None,
) -> Corpus:
    """Tokenise a corpus directory; reuse a cache only if every file's sha256 still matches.

    Passing `vocab` encodes the splits with that vocabulary (e.g. a checkpoint's) instead of
    building one from the training split.
    """
    paths = check_corpus_dir(directory, file_names)
    checksums = {split: sha256_file(path) for split, path in paths.items()}
    cache_file = None
    if cache_dir is not None and vocab is None:
        key = hashlib.sha256("".join(checksums[s] for s in SPLITS).encode()).hexdigest()[:24]
        cache_file = Path(cache_dir) / f"corpus-{key}.pt"
        if cache_file.is_file():
            try:
                cached = torch.load(cache_file, weights_only=True)
                if cached.get("checksums") == checksums:
                    return Corpus(Vocabulary(cached["vocab"]), cached["splits"], checksums)
            except Exception:  # a broken cache is rebuilt, never trusted
                pass
    lines = {split: read_lines(path) for split, path in paths.items()}
    vocab = vocab or Vocabulary.from_lines(lines["train"])
    splits = {split: encode_lines(lines[split], vocab, str(paths[split]))[0] for split in SPLITS}
    corpus = Corpus(vocab, splits, checksums)
    if cache_file is not None:
        payload = {"vocab": vocab.words, "splits": splits, "checksums": checksums}
        with contextlib.suppress(OSError):  # a read-only cache directory only costs us the cache
            atomic_torch_save(payload, cache_file)
    return corpus
