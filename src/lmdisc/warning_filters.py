"""The library messages a user can do nothing about, silenced in one place.

Every entry point installs these (`lmdisc.cli` imports this module), and so does every process
Lightning starts for DDP, because it runs the same entry point. Anything not listed here is shown
as usual; `tests/integration/test_warnings.py` checks that a short training run prints no other
warning. Add to the list only what the user cannot act on, with the reason.
"""

from __future__ import annotations

import logging
import warnings

# (message regex, why it is harmless)
IGNORED_WARNINGS: tuple[tuple[str, str], ...] = (
    (
        r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        "Lightning 2.6's own pytree helper against torch >= 2.10: internal to Lightning",
    ),
    (
        r"You're resuming from a checkpoint that ended before the epoch ended",
        "our loaders are not Lightning-stateful, but LMDataModule restores their position itself "
        "(lmdisc.resume, data/resumable.py; tests/integration/test_exact_resume.py): the resume is exact",
    ),
)

# Lightning's advertisement for its hosted logger, printed by every run at info level
_IGNORED_INFO = ("💡 Tip: For seamless cloud logging",)


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(_IGNORED_INFO)


def install() -> None:
    """Silence the listed messages (idempotent)."""
    for pattern, _why in IGNORED_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropTips) for f in logger.filters):
            logger.addFilter(_DropTips())
