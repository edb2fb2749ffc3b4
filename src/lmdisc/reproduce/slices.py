"""Named slices of a corpus: fixed line ranges of its validation and test text, as a corpus folder
of their own (train.txt whole, so the tokenizer, the word list and the frequency buckets are the
full corpus's), under `<pipeline>/slices/<name>/`.

A stage reads one as `data.path={slice:NAME}`, which becomes `${paths.slices}/NAME` with
`paths.slices` given where the stage runs: its identity then holds `<paths.slices>/NAME`, not
this machine's directory, so a moved pipeline still matches its finished stages. A slice is a
function of its source files and line ranges alone (rewritten only when its text would change),
and the tokenised-corpus cache is keyed by the files' sha256, so a changed range is re-read.

Why folders and not a data option: the grid of a study must validate and be evaluated (by
train.py's own evaluation, with its frequency buckets) on the same few hundred lines, and every
entry point already reads a corpus folder.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from lmdisc.errors import LmdiscError
from lmdisc.io import atomic_write_text

from .spec import NAME

SPLITS = ("valid", "test")
SLICE_KEYS = {"from", "source", "valid", "test"}
PLACEHOLDER = re.compile(r"\{slice:([^{}]*)\}")


def check_slices(slices: Mapping | None) -> dict[str, dict]:
    """{name: {from, source, valid: (start, stop), test: (start, stop)}}; refuses a bad range."""
    checked = {}
    for name, spec in (slices or {}).items():
        where = f"pipeline.slices.{name}"
        if not NAME.fullmatch(str(name)):
            raise LmdiscError(f"{where}: {name!r} is not a usable slice name (letters, digits, _ and -)")
        if not isinstance(spec, Mapping) or not spec.get("from"):
            raise LmdiscError(
                f"{where} needs from: DIR (a corpus folder with train.txt, valid.txt and test.txt)"
            )
        unknown = set(spec) - SLICE_KEYS
        if unknown:
            raise LmdiscError(
                f"{where} has unknown keys {sorted(unknown)}; a slice sets {sorted(SLICE_KEYS)}"
            )
        ranges = {}
        for split in SPLITS:
            span = spec.get(split)
            if (
                not isinstance(span, (list, tuple))
                or len(span) != 2
                or not all(isinstance(x, int) and not isinstance(x, bool) for x in span)
                or not 0 <= span[0] < span[1]
            ):
                raise LmdiscError(
                    f"{where}.{split} must be a line range [start, stop) with 0 <= start < stop, got {span!r}"
                )
            ranges[split] = (span[0], span[1])
        checked[str(name)] = {"from": str(spec["from"]), "source": spec.get("source"), **ranges}
    return checked


def fill_slices(override: str, known: Mapping) -> str:
    """`{slice:NAME}` -> `${paths.slices}/NAME` (refused if no such slice is configured)."""

    def replace(match: re.Match) -> str:
        if match.group(1) not in known:
            raise LmdiscError(
                f"{override!r} names slice {match.group(1)!r}, which pipeline.slices does not define "
                f"(defined: {sorted(known)})"
            )
        return "${paths.slices}/" + match.group(1)

    return PLACEHOLDER.sub(replace, override)


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines(keepends=True)


def _write_if_changed(text: str, path: Path) -> None:
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        atomic_write_text(text, path)


def write_slices(slices: Mapping, root: Path, log=print) -> dict[str, dict]:
    """Write each slice's folder under `root`; returns what the report says of each (its lines)."""
    described = {}
    for name, spec in slices.items():
        source = Path(spec["from"])
        if spec.get("source") and not (source / "train.txt").is_file():
            from lmdisc.data.download import SOURCES, ensure_corpus

            ensure_corpus(source, SOURCES[spec["source"]])
        out = Path(root) / name
        out.mkdir(parents=True, exist_ok=True)
        train = source / "train.txt"
        if not train.is_file():
            raise LmdiscError(f"pipeline.slices.{name}: {train} does not exist (from: a corpus folder)")
        _write_if_changed(train.read_text(encoding="utf-8"), out / "train.txt")
        described[name] = {"from": str(source)}
        for split in SPLITS:
            lines = _lines(source / f"{split}.txt")
            start, stop = spec[split]
            if stop > len(lines):
                raise LmdiscError(
                    f"pipeline.slices.{name}.{split}=[{start}, {stop}) runs past the {len(lines)} lines of "
                    f"{source / f'{split}.txt'}"
                )
            part = lines[start:stop]
            if not any(line.strip() for line in part):
                raise LmdiscError(f"pipeline.slices.{name}.{split}=[{start}, {stop}) holds no words")
            _write_if_changed("".join(part), out / f"{split}.txt")
            described[name][split] = {"lines": [start, stop], "words": sum(len(x.split()) + 1 for x in part)}
        log(f"[slice] {name}: {out} (valid lines {spec['valid']}, test lines {spec['test']} of {source})")
    return described
