"""A normal run's output holds no warning the user cannot act on (lmdisc.warning_filters lists the
library messages silenced, with why)."""

import re
import subprocess
import sys

import pytest

from helpers import DATA_DIR, REPO, quick_overrides

pytestmark = pytest.mark.slow

WARNING_LINE = re.compile(r"warn|deprecat|recommended|💡", re.IGNORECASE)


def _output(command: list[str], tmp_path) -> str:
    done = subprocess.run(
        [sys.executable, *command, f"paths.root_dir={tmp_path}", f"paths.data_dir={DATA_DIR}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout + done.stderr


def test_a_short_training_run_prints_no_warning(tiny_corpus, tmp_path):
    output = _output(
        [
            "train.py",
            *quick_overrides(tiny_corpus),
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=10",
            "trainer.log_every_n_steps=2",
            "trainer.enable_model_summary=true",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        tmp_path,
    )
    assert "val/ppl" in output or "perplexity" in output  # it really ran and reported
    assert [line for line in output.splitlines() if WARNING_LINE.search(line)] == []
