"""`data.detokenize=true`: undo WikiText's tokenisation before a subword model reads the text.

WikiText is distributed tokenised: "1 @,@ 000", "well @-@ known", spaces before punctuation and
around brackets, "it 's". A pretrained subword model saw ordinary text, so as in the GPT-2 paper
its perplexity is measured on text with these marks undone. The rules below are the usual
invertible WikiText de-tokenisers' (GPT-2, Megatron); they are written for WikiText and change
little in PTB (contractions, punctuation). Word-level perplexity keeps the word count of the
*original* text, so the detokenised and tokenised numbers share a denominator and compare.
"""

from __future__ import annotations

import re

_REPLACEMENTS = (
    (" @-@ ", "-"),
    (" @,@ ", ","),
    (" @.@ ", "."),
    (" : ", ": "),
    (" ; ", "; "),
    (" . ", ". "),
    (" ! ", "! "),
    (" ? ", "? "),
    (" , ", ", "),
    (" n't", "n't"),
    (" 's", "'s"),
    (" 're", "'re"),
    (" 've", "'ve"),
    (" 'm", "'m"),
    (" 'll", "'ll"),
    (" 'd", "'d"),
    ("( ", "("),
    (" )", ")"),
    ("[ ", "["),
    (" ]", "]"),
    ("{ ", "{"),
    (" }", "}"),
    ("= = = =", "===="),
    ("= = =", "==="),
    ("= =", "=="),
)
_QUOTED = re.compile(r'" ([^"]*?) "')
_END_PUNCT = re.compile(r" ([.,;:!?])$")


def detokenize_wikitext(line: str) -> str:
    """One line of WikiText with its tokenisation undone (leading/trailing spaces kept)."""
    lead = line[: len(line) - len(line.lstrip(" "))]
    trail = line[len(line.rstrip(" ")) :]
    text = line.strip(" ")
    if not text:
        return line
    text = f" {text} "
    for old, new in _REPLACEMENTS:
        text = text.replace(old, new)
    text = _QUOTED.sub(r'"\1"', text)
    text = _END_PUNCT.sub(r"\1", text.rstrip(" "))
    return lead + text.strip(" ") + trail
