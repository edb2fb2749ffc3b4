"""Helpers for tests: compose the real Hydra config, locate corpora, cut small slices."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from lmdisc.cli import CONF_DIR

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("LMDISC_DATA_DIR") or REPO.parent / "shared" / "data")


def corpus_dir(name: str) -> Path:
    path = DATA_DIR / name
    if not (path / "train.txt").is_file():
        pytest.skip(f"corpus {name} not found under {DATA_DIR} (set LMDISC_DATA_DIR)")
    return path


def write_slice(src: Path, dst: Path, lines: dict[str, int]) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for split, count in lines.items():
        with open(src / f"{split}.txt", encoding="utf-8") as handle:
            head = [next(handle) for _ in range(count)]
        (dst / f"{split}.txt").write_text("".join(head), encoding="utf-8")
    return dst


def compose_train(tmp_path: Path, overrides: list[str], config_name: str = "train") -> DictConfig:
    """Compose the real config as the CLI would, with this test's output directory."""
    base = [
        f"paths.root_dir={tmp_path}",
        f"paths.output_dir={tmp_path / 'run'}",
        f"paths.data_dir={DATA_DIR}",
    ]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name, overrides=base + overrides)
    return cfg


def quick_overrides(corpus: Path, model: str = "lstm_small") -> list[str]:
    """A small, fast CPU run on `corpus` (no progress bar, CSV logger)."""
    return [
        "data=text",
        f"data.path={corpus}",
        "data.batch_size=8",
        "data.eval_batch_size=4",
        "data.bptt=10",
        f"model={model}",
        "trainer.accelerator=cpu",
        "callbacks.progress_bar=null",
        "trainer.enable_model_summary=false",
    ]


def disc_overrides(lm_ckpt, encoder: str = "lm_frozen") -> list[str]:
    """train_disc.py against `lm_ckpt` on the CPU, quietly."""
    return [
        f"lm_ckpt={lm_ckpt}",
        f"discriminator={encoder}",
        "trainer.accelerator=cpu",
        "trainer.enable_model_summary=false",
        "trainer.enable_progress_bar=false",
        "logger=none",
    ]


def rkl_overrides(corpus: Path, lm_ckpt, disc_ckpt) -> list[str]:
    """A quick loss=rkl_disc fine-tuning of `lm_ckpt` on `corpus` against `disc_ckpt`."""
    return [
        *quick_overrides(corpus),
        "loss=rkl_disc",
        f"init_from={lm_ckpt}",
        f"loss.discriminator_ckpt={disc_ckpt}",
    ]
