"""Corpora, tokenizers, window protocols and the LightningDataModule."""

from .corpus import Corpus, TokenizedSplit, TokenizerSpec, load_corpus, read_lines
from .datamodule import LMDataModule
from .protocols import BlockProtocol, StreamProtocol
from .tokenizers import BLANK, EOS, UNK, SubwordTokenizer, Tokenizer, WordTokenizer
from .window import IGNORE_INDEX, Window

__all__ = [
    "BLANK",
    "EOS",
    "IGNORE_INDEX",
    "UNK",
    "BlockProtocol",
    "Corpus",
    "LMDataModule",
    "StreamProtocol",
    "SubwordTokenizer",
    "TokenizedSplit",
    "Tokenizer",
    "TokenizerSpec",
    "Window",
    "WordTokenizer",
    "load_corpus",
    "read_lines",
]
