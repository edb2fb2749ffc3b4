"""Word-level vocabulary: the mapping between words and ids that a checkpoint carries."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

EOS = "<eos>"
UNK = "<unk>"


class Vocabulary:
    """Ordered list of word types; ids are positions in the list.

    Built from the training split in order of first appearance (as pytorch/examples does), so
    the ids are stable for a given file and a checkpoint can store the list verbatim.
    """

    def __init__(self, words: Sequence[str]):
        self.words = list(words)
        self.index = {w: i for i, w in enumerate(self.words)}
        if len(self.index) != len(self.words):
            raise ValueError("vocabulary has duplicate words")

    @classmethod
    def from_lines(cls, lines: Iterable[str]) -> Vocabulary:
        counts: Counter[str] = Counter()
        for line in lines:
            counts.update(line.split())
            counts[EOS] += 1
        return cls(list(counts))

    def __len__(self) -> int:
        return len(self.words)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.words == other.words

    def __contains__(self, word: str) -> bool:
        return word in self.index

    @property
    def eos_id(self) -> int:
        return self.index[EOS]

    @property
    def unk_id(self) -> int | None:
        return self.index.get(UNK)
