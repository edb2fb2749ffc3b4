"""Corpora, vocabulary, stream batching and the LightningDataModule."""

from .batching import IGNORE_INDEX, StreamBatches, WindowDataset, WindowSampler, bptt_windows, layout_stream
from .corpus import Corpus, load_corpus, read_lines
from .datamodule import LMDataModule
from .vocab import EOS, UNK, Vocabulary

__all__ = [
    "EOS",
    "IGNORE_INDEX",
    "UNK",
    "Corpus",
    "LMDataModule",
    "StreamBatches",
    "Vocabulary",
    "WindowDataset",
    "WindowSampler",
    "bptt_windows",
    "layout_stream",
    "load_corpus",
    "read_lines",
]
