"""Data noising as smoothing (Xie et al. 2017, "Data Noising as Smoothing in Neural Network Language
Models"), for the training inputs only.

With probability gamma, each training *input* token is replaced by the tokenizer's blank
(`blank` noising) or by a draw from the training split's unigram distribution over the predicted
ids (`unigram` noising). The targets stay the clean next tokens, and nothing else is noised:
validation, test, the train_eval slice and the discriminator's text are read by other loaders.

Each window's noise comes from a generator seeded by (seed, epoch, rank, the window's index in its
dataset) and by nothing else: not the number of workers, not the order in which the windows are
read, not whether the run was resumed. A rerun and a resumed run noise identically, and every epoch
noises afresh. The epoch reaches the dataset (and its workers) through the sampler, which Lightning
tells the epoch (`set_epoch`) and which here hands out each index together with it; the stream
protocol's loader is built once for all epochs, so the epoch at build time would not do.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from lmdisc.errors import LmdiscError

from .window import Window

NOISES = ("none", "unigram", "blank")
GAMMA_RANGE = "a number in [0, 1) (the chance that each training input is replaced)"


def check_noise(noise, gamma) -> tuple[str, float]:
    """(noise, gamma) if valid, else one `LmdiscError` saying what is allowed."""
    if noise not in NOISES:
        raise LmdiscError(f"data.noise must be one of {list(NOISES)}, got {noise!r}")
    if (
        isinstance(gamma, bool)
        or not isinstance(gamma, (int, float))
        or not (math.isfinite(gamma) and 0 <= gamma < 1)
    ):
        raise LmdiscError(f"data.noise_gamma must be {GAMMA_RANGE}, got {gamma!r}")
    return noise, float(gamma)


def unigram_distribution(ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """The relative frequency of each predicted id (0 .. vocab_size-1) in `ids` (input-only ids never
    occur in the text; a blank in it would not be drawn)."""
    counts = torch.bincount(ids, minlength=vocab_size)[:vocab_size].double()
    return counts / counts.sum()


class Noising:
    """Replaces each input with probability `gamma`: by `blank_id`, or by a draw from `unigram`."""

    def __init__(
        self, kind: str, gamma: float, seed: int, blank_id: int, unigram: torch.Tensor | None = None
    ):
        self.kind, self.gamma = check_noise(kind, gamma)
        if self.kind == "unigram" and unigram is None:
            raise ValueError("unigram noising needs the unigram distribution")
        self.seed, self.blank_id, self.unigram = int(seed), int(blank_id), unigram

    def generator(self, epoch: int, rank: int, index) -> torch.Generator:
        """A generator that is a function of (seed, epoch, rank, index) alone (index: an int or a tuple)."""
        parts = [self.seed, epoch, rank, *(index if isinstance(index, tuple) else (index,))]
        state = np.random.SeedSequence([int(p) % 2**64 for p in parts]).generate_state(1, np.uint64)[0]
        return torch.Generator().manual_seed(int(state))

    def apply(self, inputs: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(noised copy of `inputs`, which positions were replaced); `inputs` itself is never written
        (it may be a view of the corpus). A unigram draw may give back the token it replaces."""
        replaced = torch.rand(inputs.shape, generator=generator) < self.gamma
        if self.kind == "blank":
            return inputs.masked_fill(replaced, self.blank_id), replaced
        noised = inputs.clone()
        count = int(replaced.sum())
        if self.kind == "unigram" and count:
            noised[replaced] = torch.multinomial(self.unigram, count, replacement=True, generator=generator)
        return noised, replaced


class NoisedWindows(Dataset):
    """The windows of `dataset` with their inputs noised; indexed by (epoch, the dataset's index)."""

    def __init__(self, dataset: Dataset, noising: Noising, rank: int):
        self.dataset, self.noising, self.rank = dataset, noising, rank

    def __getitem__(self, item) -> Window:
        epoch, index = item
        window = self.dataset[index]
        noised, _ = self.noising.apply(window.inputs, self.noising.generator(epoch, self.rank, index))
        return window._replace(inputs=noised)


class EpochIndices(Sampler):
    """Yields (epoch, index) for each index of `sampler`; passes `set_epoch` on to it."""

    def __init__(self, sampler: Sampler, epoch: int):
        self.sampler, self.epoch = sampler, epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if callable(getattr(self.sampler, "set_epoch", None)):
            self.sampler.set_epoch(epoch)

    def __iter__(self):
        return ((self.epoch, index) for index in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


def noised_loader(loader: DataLoader, noising: Noising, epoch: int, rank: int) -> DataLoader:
    """`loader` (a protocol's training loader) with its windows' inputs noised, batched as before."""
    return DataLoader(
        NoisedWindows(loader.dataset, noising, rank),
        batch_size=loader.batch_size,
        sampler=EpochIndices(loader.sampler, epoch),
        collate_fn=loader.collate_fn,
        drop_last=loader.drop_last,
        num_workers=loader.num_workers,
        pin_memory=loader.pin_memory,
        generator=loader.generator,
    )


def noise_training_loader(
    loader: DataLoader,
    kind: str,
    gamma: float,
    seed: int,
    epoch: int,
    rank: int,
    tokenizer,
    train_ids: torch.Tensor,
) -> DataLoader:
    """The training loader as `data.noise` / `data.noise_gamma` say; unchanged for none or gamma 0.
    `train_ids`: the training split as training reads it (its unigram distribution)."""
    kind, gamma = check_noise(kind, gamma)
    if kind == "none" and gamma > 0:
        warnings.warn(
            f"data.noise_gamma={gamma} has no effect with data.noise=none: the training text is not noised",
            stacklevel=2,
        )
    if kind == "none" or gamma == 0:
        return loader
    unigram = unigram_distribution(train_ids, tokenizer.vocab_size) if kind == "unigram" else None
    return noised_loader(loader, Noising(kind, gamma, seed, tokenizer.blank_id, unigram), epoch, rank)
