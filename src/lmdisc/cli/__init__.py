"""Hydra entry points; `conf/` sits at the repository root (override with LMDISC_CONF_DIR)."""

import os
from pathlib import Path

from omegaconf import OmegaConf

from lmdisc import warning_filters

CONF_DIR = os.environ.get("LMDISC_CONF_DIR") or str(Path(__file__).resolve().parents[3] / "conf")

# the directory the command was started in; unlike ${hydra:runtime.cwd} it also resolves where
# Hydra's own config is not set yet (multirun sweep directories) and in the compose API
OmegaConf.register_new_resolver("lmdisc.cwd", os.getcwd, replace=True)

warning_filters.install()
