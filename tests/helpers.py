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
    """A real corpus. Missing, it fails the test when LMDISC_DATA_DIR says where corpora are (as
    `make test` and CI do: a suite that skips its integration tests would be a false green), and
    skips it otherwise."""
    path = DATA_DIR / name
    if not (path / "train.txt").is_file():
        message = f"corpus {name} not found under {DATA_DIR}"
        if os.environ.get("LMDISC_DATA_DIR"):
            pytest.fail(f"{message} (LMDISC_DATA_DIR is set: the corpora must be there)")
        pytest.skip(f"{message} (set LMDISC_DATA_DIR)")
    return path


def write_slice(src: Path, dst: Path, lines: dict[str, int]) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for split, count in lines.items():
        with open(src / f"{split}.txt", encoding="utf-8") as handle:
            head = [next(handle) for _ in range(count)]
        (dst / f"{split}.txt").write_text("".join(head), encoding="utf-8")
    return dst


def compose_train(
    tmp_path: Path, overrides: list[str], config_name: str = "train", return_hydra_config: bool = False
) -> DictConfig:
    """Compose the real config as the CLI would, with this test's output directory (and with its
    Hydra settings, e.g. the launcher, when `return_hydra_config`)."""
    base = [
        f"paths.root_dir={tmp_path}",
        f"paths.output_dir={tmp_path / 'run'}",
        f"paths.data_dir={DATA_DIR}",
    ]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name, overrides=base + overrides, return_hydra_config=return_hydra_config)
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


def gpt_overrides(corpus: Path) -> list[str]:
    """A quick CPU run of a tiny GPT on `corpus` with a 512-token BPE."""
    return [
        *quick_overrides(corpus, "gpt"),
        "data.tokenizer=bpe",
        "data.vocab_size=512",
        "data.block_size=32",
        "model.block_size=32",
        "model.n_layer=2",
        "model.n_head=2",
        "model.n_embd=64",
        "optim=adamw",
        "optim.optimizer.lr=0.003",
    ]


def hf_overrides(corpus: Path, model_dir: Path) -> list[str]:
    """A quick CPU run of a tiny transformers model (model=hf, its own tokenizer) on `corpus`."""
    return [
        *quick_overrides(corpus, "hf"),
        f"model.name_or_path={model_dir}",
        "data.block_size=32",
        "optim=adamw",
        "optim.optimizer.lr=0.003",
    ]


def make_tiny_hf_models(directory: Path, corpus: Path) -> dict[str, Path]:
    """A tiny Llama and a tiny GPT-2, built here and saved with a BPE trained on `corpus` (no network)."""
    import torch
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
    )

    from lmdisc.data.corpus import read_lines
    from lmdisc.data.tokenizers import train_bpe

    tokenizer = train_bpe(read_lines(corpus / "train.txt"), 512)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend, eos_token="<|endoftext|>")
    vocab = tokenizer.vocab_size
    torch.manual_seed(0)
    models = {
        "llama": LlamaForCausalLM(
            LlamaConfig(
                vocab_size=vocab,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                max_position_embeddings=64,
                tie_word_embeddings=True,
                bos_token_id=None,
                eos_token_id=None,
            )
        ),
        "gpt2": GPT2LMHeadModel(
            GPT2Config(
                vocab_size=vocab,
                n_embd=32,
                n_layer=2,
                n_head=4,
                n_positions=64,
                bos_token_id=None,
                eos_token_id=None,
            )
        ),
    }
    paths = {}
    for name, model in models.items():
        paths[name] = directory / name
        model.save_pretrained(paths[name])
        fast.save_pretrained(paths[name])
    return paths


def run_cli(
    module: str,
    overrides: list[str],
    tmp_path: Path,
    out: Path,
    timeout: int = 600,
    returncode: int = 0,
    env: dict[str, str] | None = None,
):
    """`python -m module` (an entry point of ours) through the real CLI, one thread per process,
    into `out` (with tests/ importable, for callbacks named by `_target_`; `env` added to the
    environment); fails the test with the output's tail unless it exits with `returncode`."""
    import subprocess
    import sys

    command = [
        sys.executable,
        "-m",
        module,
        *overrides,
        f"paths.root_dir={tmp_path}",
        f"paths.data_dir={DATA_DIR}",
        f"hydra.run.dir={out}",
    ]
    tests = str(Path(__file__).parent)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")])),
        **(env or {}),
    }
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == returncode, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def signal_at_step(at: int, signum: int, rank: int = 0):
    """A Lightning callback by which the process of global `rank` sends itself `signum` just before
    optimiser step `at` (0-based over the run); a function, so that `_target_` can name it."""
    import lightning as L

    class SignalAtStep(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if trainer.global_step == at and trainer.global_rank == rank:
                os.kill(os.getpid(), signum)

    return SignalAtStep()
