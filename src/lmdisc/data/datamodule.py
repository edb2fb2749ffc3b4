"""LightningDataModule for word-level corpora (PTB, WikiText-2/103, any train/valid/test folder)."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader

from lmdisc.errors import LmdiscError

from .batching import WindowDataset, WindowSampler, layout_stream
from .corpus import Corpus, check_corpus_dir, load_corpus
from .download import SOURCES, ensure_corpus
from .vocab import Vocabulary


def _positive(name: str, value: int) -> int:
    if not isinstance(value, int) or value <= 0:
        raise LmdiscError(f"data.{name} must be a positive integer, got {value!r}")
    return value


class LMDataModule(L.LightningDataModule):
    """Loads a corpus and serves BPTT windows of this rank's contiguous shard.

    `source` names a known corpus (see `lmdisc.data.download.SOURCES`) that is downloaded into
    `corpus_dir` when missing; `source=None` reads a user folder as it is.
    """

    def __init__(
        self,
        path: str,
        name: str = "text",
        source: str | None = None,
        download: bool = True,
        batch_size: int = 20,
        eval_batch_size: int = 10,
        test_batch_size: int = 1,
        bptt: int = 35,
        variable_bptt: bool = False,
        seed: int = 0,
        cache_dir: str | None = None,
        num_workers: int = 0,
        train_eval_tokens: int = 0,
        train_split: str = "train",
        heldout_fraction: float = 0.5,
        vocab: Vocabulary | None = None,
    ):
        super().__init__()
        self.corpus_dir = Path(os.path.expanduser(str(path)))
        self.name = name
        if source is not None and source not in SOURCES:
            raise LmdiscError(f"unknown corpus source {source!r}; known: {sorted(SOURCES)}")
        self.source = source
        self.download = download
        self.batch_size = _positive("batch_size", batch_size)
        self.eval_batch_size = _positive("eval_batch_size", eval_batch_size)
        self.test_batch_size = _positive("test_batch_size", test_batch_size)
        self.bptt = _positive("bptt", bptt)
        self.variable_bptt = variable_bptt
        self.seed = seed
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.num_workers = num_workers
        if train_eval_tokens < 0:
            raise LmdiscError(f"data.train_eval_tokens must be >= 0, got {train_eval_tokens}")
        self.train_eval_tokens = train_eval_tokens
        if train_split not in ("train", "heldout"):
            raise LmdiscError(f"train_split must be train or heldout, got {train_split!r}")
        if not 0 < heldout_fraction < 1:
            raise LmdiscError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
        self.train_split = train_split
        self.heldout_fraction = heldout_fraction
        self.fixed_vocab = vocab
        self.corpus: Corpus | None = None

    def prepare_data(self) -> None:
        if self.source is not None and self.download:
            ensure_corpus(self.corpus_dir, SOURCES[self.source])
        else:
            if not self.corpus_dir.is_dir():
                raise LmdiscError(
                    f"corpus directory {self.corpus_dir} does not exist; point data.path (or "
                    "paths.data_dir / LMDISC_DATA_DIR) at a folder with train.txt, valid.txt, test.txt"
                )
            check_corpus_dir(self.corpus_dir)

    def load(self) -> Corpus:
        """Tokenise the corpus once (idempotent); usable without a Trainer."""
        if self.corpus is None:
            self.prepare_data()
            self.corpus = load_corpus(self.corpus_dir, self.cache_dir, vocab=self.fixed_vocab)
        return self.corpus

    @property
    def vocab(self) -> Vocabulary:
        return self.load().vocab

    def setup(self, stage: str | None = None) -> None:
        self.load()

    def _stream(self, split: str, train_split: str | None = None, heldout_fraction: float | None = None):
        """A split as training and validation see it. With train_split=heldout, training reads
        the first `heldout_fraction` of the validation text and validation only the rest (the
        boundary token is an input of both, a target of neither twice)."""
        corpus = self.load()
        train_split = train_split or self.train_split
        if train_split == "train" or split == "test":
            return corpus[split]
        valid = corpus["valid"]
        cut = int(valid.numel() * (heldout_fraction or self.heldout_fraction))
        return valid[: cut + 1] if split == "train" else valid[cut:]

    def discriminator_loader(self, train_split: str, heldout_fraction: float) -> DataLoader:
        """The text a discriminator trains on (train, or the held-out part of valid), unsharded:
        every rank re-trains the same discriminator on the same windows."""
        return self._windows(self._stream("train", train_split, heldout_fraction), self.batch_size)

    def _rank_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def _loader(
        self, split: str, batch_size: int, variable: bool, sharded: bool = True, max_tokens: int = 0
    ) -> DataLoader:
        rank, world = self._rank_world() if sharded else (0, 1)
        stream = self._stream(split) if sharded else self.load()[split]
        if max_tokens:
            stream = stream[: max_tokens + 1]
        return self._windows(stream, batch_size, rank, world, variable)

    def _windows(
        self, stream, batch_size: int, rank: int = 0, world: int = 1, variable: bool = False
    ) -> DataLoader:
        """BPTT windows over `stream` laid out in `batch_size` columns (this rank's shard)."""
        batches = layout_stream(stream, batch_size, rank, world)
        sampler = WindowSampler(batches.length, self.bptt, variable, self.seed)
        if variable and getattr(self, "trainer", None) is not None:
            # Lightning counts an epoch's batches when it builds the loader, before set_epoch:
            # draw this epoch's lengths now (train.py reloads the loader every epoch)
            sampler.set_epoch(self.trainer.current_epoch)
        return DataLoader(
            WindowDataset(batches), sampler=sampler, batch_size=None, num_workers=self.num_workers
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, self.variable_bptt)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """Validation; plus, with `train_eval_tokens`, a fixed slice of train read in eval mode
        (so the generalisation gap is not distorted by dropout)."""
        valid = self._loader("valid", self.eval_batch_size, False)
        if not self.train_eval_tokens:
            return valid
        return [valid, self._loader("train", self.eval_batch_size, False, max_tokens=self.train_eval_tokens)]

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.test_batch_size, False)

    def split_loader(self, split: str, batch_size: int) -> DataLoader:
        """Unsharded fixed-window loader over a whole split (the standard evaluation protocol)."""
        return self._loader(split, _positive("batch_size", batch_size), False, sharded=False)
