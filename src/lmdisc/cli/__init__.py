"""Hydra entry points; `conf/` sits at the repository root (override with LMDISC_CONF_DIR)."""

import os
from pathlib import Path

CONF_DIR = os.environ.get("LMDISC_CONF_DIR") or str(Path(__file__).resolve().parents[3] / "conf")
