"""LightningDataModule for text corpora (PTB, WikiText-2/103, any train/valid/test folder)."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader

from lmdisc.errors import LmdiscError

from .corpus import TOKENIZERS, Corpus, TokenizedSplit, TokenizerSpec, check_corpus_dir, load_corpus
from .download import SOURCES, ensure_corpus
from .noising import check_noise, noise_training_loader
from .protocols import PROTOCOLS, BlockProtocol, StreamProtocol, choose_protocol
from .tokenizers import Tokenizer


def _positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise LmdiscError(f"data.{name} must be a whole number >= 1, got {value!r}")
    return value


class LMDataModule(L.LightningDataModule):
    """Loads and tokenises a corpus and serves windows of this rank's share by a window protocol.

    `source` names a known corpus (see `lmdisc.data.download.SOURCES`) that is downloaded into
    `path` when missing; `source=None` reads a user folder as it is. `protocol=auto` becomes
    `stream` for a recurrent model and `blocks` for a transformer once `bind_model` has seen it.
    """

    def __init__(
        self,
        path: str,
        name: str = "text",
        source: str | None = None,
        download: bool = True,
        tokenizer: str = "word",
        vocab_size: int | None = None,
        tokenizer_from: str | None = None,
        detokenize: bool = False,
        protocol: str = "auto",
        batch_size: int = 20,
        eval_batch_size: int = 10,
        bptt: int = 35,
        variable_bptt: bool = False,
        block_size: int = 256,
        eval_stride: int | None = None,
        seed: int = 0,
        cache_dir: str | None = None,
        num_workers: int = 0,
        train_eval_tokens: int = 0,
        noise: str = "none",
        noise_gamma: float = 0.0,
        train_split: str = "train",
        heldout_fraction: float = 0.5,
        tokenizer_object: Tokenizer | None = None,
    ):
        super().__init__()
        self.corpus_dir = Path(os.path.expanduser(str(path)))
        self.name = name
        if source is not None and source not in SOURCES:
            raise LmdiscError(f"unknown corpus source {source!r}; known: {sorted(SOURCES)}")
        if tokenizer not in TOKENIZERS:
            raise LmdiscError(f"data.tokenizer must be one of {list(TOKENIZERS)}, got {tokenizer!r}")
        if protocol not in PROTOCOLS:
            raise LmdiscError(f"data.protocol must be one of {list(PROTOCOLS)}, got {protocol!r}")
        self.source = source
        self.download = download
        self.spec = TokenizerSpec(tokenizer, vocab_size, tokenizer_from, bool(detokenize))
        self.requested_protocol = protocol
        self.batch_size = _positive("batch_size", batch_size)
        self.eval_batch_size = _positive("eval_batch_size", eval_batch_size)
        self.bptt = _positive("bptt", bptt)
        self.variable_bptt = variable_bptt
        self.block_size = _positive("block_size", block_size)
        if eval_stride is not None and (
            isinstance(eval_stride, bool)
            or not isinstance(eval_stride, int)
            or not 0 < eval_stride <= block_size
        ):
            raise LmdiscError(
                f"data.eval_stride must be a whole number in 1..data.block_size ({block_size}), got {eval_stride!r}"
            )
        self.eval_stride = eval_stride
        self.seed = seed
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.num_workers = num_workers
        if (
            isinstance(train_eval_tokens, bool)
            or not isinstance(train_eval_tokens, int)
            or train_eval_tokens < 0
        ):
            raise LmdiscError(
                f"data.train_eval_tokens must be a whole number >= 0, got {train_eval_tokens!r}"
            )
        self.train_eval_tokens = train_eval_tokens
        # data noising of the training inputs (lmdisc.data.noising)
        self.noise, self.noise_gamma = check_noise(noise, noise_gamma)
        if train_split not in ("train", "heldout"):
            raise LmdiscError(f"train_split must be train or heldout, got {train_split!r}")
        if not 0 < heldout_fraction < 1:
            raise LmdiscError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
        self.train_split = train_split
        self.heldout_fraction = heldout_fraction
        self.fixed_tokenizer = tokenizer_object
        self.corpus: Corpus | None = None
        self.protocol: StreamProtocol | BlockProtocol | None = None
        # (epoch, batches done) from a checkpoint: that epoch's loader starts after those batches
        self._resume_at: tuple[int, int] | None = None

    # ---- corpus ---------------------------------------------------------------------------
    def prepare_data(self) -> None:
        if self.source is not None and self.download:
            ensure_corpus(self.corpus_dir, SOURCES[self.source])
        elif self.corpus_dir.is_file():
            raise LmdiscError(
                f"data.path={self.corpus_dir} is a file; point it at the folder that holds train.txt, "
                "valid.txt and test.txt"
            )
        elif not self.corpus_dir.is_dir():
            raise LmdiscError(
                f"corpus directory {self.corpus_dir} does not exist; point data.path (or "
                "paths.data_dir / LMDISC_DATA_DIR) at a folder with train.txt, valid.txt, test.txt"
            )
        else:
            check_corpus_dir(self.corpus_dir)

    def load(self) -> Corpus:
        """Tokenise the corpus once (idempotent); usable without a Trainer."""
        if self.corpus is None:
            self.prepare_data()
            self.corpus = load_corpus(
                self.corpus_dir, self.spec, self.cache_dir, tokenizer=self.fixed_tokenizer
            )
        return self.corpus

    @property
    def tokenizer(self) -> Tokenizer:
        return self.load().tokenizer

    def setup(self, stage: str | None = None) -> None:
        self.load()

    # ---- protocol -------------------------------------------------------------------------
    def bind_model(self, model, training: bool = False) -> StreamProtocol | BlockProtocol:
        """Choose the window protocol for `model` (`protocol=auto`) and check the windows fit it (and,
        to train, that the training text holds a block)."""
        self.protocol = choose_protocol(
            self.requested_protocol,
            model,
            self.bptt,
            self.variable_bptt,
            self.block_size,
            self.eval_stride,
            self.seed,
        )
        name = self.protocol.name
        training_text = len(self._split("train")) if training and name == "blocks" else None
        if training_text is not None and training_text - 1 < self.block_size:
            raise LmdiscError(
                f"data.block_size={self.block_size} is longer than the training text ({training_text:,} "
                "tokens): lower data.block_size"
            )
        return self.protocol

    def _protocol(self) -> StreamProtocol | BlockProtocol:
        if self.protocol is None:
            raise RuntimeError("LMDataModule.bind_model(model) must choose the window protocol first")
        return self.protocol

    def _split(self, split: str, train_split: str | None = None, heldout_fraction: float | None = None):
        """A split as training and validation see it. With train_split=heldout, training reads
        the first `heldout_fraction` of the validation text and validation only the rest (the
        boundary token is an input of both, a target of neither twice)."""
        corpus = self.load()
        train_split = train_split or self.train_split
        if train_split == "train" or split == "test":
            return corpus[split]
        valid = corpus["valid"]
        cut = int(len(valid) * (heldout_fraction or self.heldout_fraction))
        return valid.slice(0, cut + 1) if split == "train" else valid.slice(cut)

    def _rank_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def _epoch(self) -> int:
        trainer = getattr(self, "trainer", None)
        return trainer.current_epoch if trainer is not None else 0

    def windows(
        self, split: TokenizedSplit, batch_size: int, train: bool = False, sharded: bool = True, skip: int = 0
    ):
        rank, world = self._rank_world() if sharded else (0, 1)
        return self._protocol().loader(
            split, batch_size, train, rank, world, self._epoch(), self.num_workers, skip
        )

    # ---- position in the epoch (an exact mid-epoch resume, lmdisc.resume) ------------------
    def state_dict(self) -> dict:
        """Mid-epoch: the epoch and how many of its training batches are done (Lightning saves this
        with every checkpoint, on every process alike: each process's batches are its own shard's)."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return {}
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        if not 0 < done < trainer.num_training_batches:  # at an epoch's end the next one starts afresh
            return {}
        return {"epoch": trainer.current_epoch, "batches_done": int(done)}

    def load_state_dict(self, state: dict) -> None:
        if "epoch" in state:
            self._resume_at = (int(state["epoch"]), int(state["batches_done"]))

    def _batches_to_skip(self) -> int:
        """Batches of the current epoch a resumed run has already trained on (once: later epochs
        and reloads start at their beginning)."""
        if self._resume_at is None:
            return 0
        epoch, done = self._resume_at
        self._resume_at = None
        return done if epoch == self._epoch() else 0

    # ---- loaders --------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        train = self._split("train")
        loader = self.windows(train, self.batch_size, train=True, skip=self._batches_to_skip())
        rank, _ = self._rank_world()
        return noise_training_loader(
            loader, self.noise, self.noise_gamma, self.seed, self._epoch(), rank, self.tokenizer, train.ids
        )

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """Validation; plus, with `train_eval_tokens`, a fixed slice of train read in eval mode
        (so the generalisation gap is not distorted by dropout)."""
        valid = self.windows(self._split("valid"), self.eval_batch_size)
        if not self.train_eval_tokens:
            return valid
        head = self._split("train").slice(0, self.train_eval_tokens + 1)
        return [valid, self.windows(head, self.eval_batch_size)]

    def split_loader(self, split: str) -> DataLoader:
        """Unsharded evaluation windows over a whole split, by the protocol's standard batch size."""
        protocol = self._protocol()
        batch_size = protocol.eval_batch_size(split, self.eval_batch_size)
        return self.windows(self.load()[split], batch_size, sharded=False)

    def discriminator_loader(self, train_split: str, heldout_fraction: float) -> DataLoader:
        """The text a discriminator re-trains on (train, or the held-out part of valid), unsharded:
        every rank re-trains the same discriminator on the same windows. Streams are read in fixed
        BPTT windows, transformers in training blocks."""
        train = not self._protocol().carries_state
        return self.windows(
            self._split("train", train_split, heldout_fraction), self.batch_size, train, False
        )
