"""Bad input a new user hits: each refused early, by the option's name and its allowed range, as one
`error:` line with exit status 2; a diverging run stops at the step it diverged."""

import os
import subprocess
import sys

import pytest

from helpers import DATA_DIR, REPO, compose_train, quick_overrides
from lmdisc.cli.eval import evaluate
from lmdisc.cli.train import train
from lmdisc.errors import LmdiscError


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["optim.optimizer.lr=nan"], r"optim.optimizer.lr must be a finite number > 0, got nan"),
        (["optim.optimizer.lr=inf"], r"optim.optimizer.lr must be a finite number > 0, got inf"),
        (["loss=ppl_reg", "loss.alpha=nan"], r"loss.alpha must be a finite number >= 0 \(0 switches"),
        (["loss=rkl_disc", "loss.lam=-1"], r"loss.lam must be a finite number >= 0"),
        (["trainer.gradient_clip_val=-1"], r"trainer.gradient_clip_val must be a finite number >= 0 or null"),
        (["seed=abc"], r"seed must be an integer, got 'abc'"),
    ],
)
def test_out_of_range_options_are_refused_before_any_work(tmp_path, tiny_corpus, overrides, message):
    with pytest.raises(LmdiscError, match=message):
        train(compose_train(tmp_path, [*quick_overrides(tiny_corpus), *overrides]))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_file_given_as_the_corpus_folder_is_named_a_file(tmp_path, tiny_corpus):
    with pytest.raises(LmdiscError, match=r"is a file"):
        train(
            compose_train(tmp_path, [*quick_overrides(tiny_corpus), f"data.path={tiny_corpus / 'train.txt'}"])
        )


@pytest.fixture(scope="module")
def truncated_checkpoint(trained_run, tmp_path_factory):
    data = (trained_run[0] / "checkpoints" / "best.ckpt").read_bytes()
    path = tmp_path_factory.mktemp("truncated") / "partial.ckpt"
    path.write_bytes(data[: len(data) * 2 // 3])  # a partial copy
    return path


@pytest.mark.parametrize("option", ["init_from", "ckpt_path"])
def test_a_truncated_checkpoint_is_named_truncated_by_train(
    tmp_path, tiny_corpus, truncated_checkpoint, option
):
    with pytest.raises(LmdiscError, match=r"partial.ckpt is truncated \([\d,]+ bytes"):
        train(compose_train(tmp_path, [*quick_overrides(tiny_corpus), f"{option}={truncated_checkpoint}"]))


def test_a_truncated_checkpoint_is_named_truncated_by_eval(tmp_path, truncated_checkpoint):
    with pytest.raises(LmdiscError, match=r"partial.ckpt is truncated"):
        evaluate(compose_train(tmp_path, [f"ckpt={truncated_checkpoint}"], "eval"))


def test_a_diverging_run_stops_at_its_step_naming_the_batch(tmp_path, tiny_corpus):
    """exp(CE) overflows once a huge step has wrecked the weights: the run stops there, not later
    inside a metric."""
    overrides = [
        *quick_overrides(tiny_corpus),
        "loss=ppl",
        "loss.max_log_ppl=1000000",
        "optim.optimizer.lr=1e30",
        "trainer.gradient_clip_val=null",
        "trainer.max_epochs=1",
    ]
    with pytest.raises(LmdiscError) as caught:
        train(compose_train(tmp_path, overrides))
    message = str(caught.value)
    assert message.startswith("the training loss is inf at step 1 (epoch 0); the batch starts with '")
    assert "no checkpoint saved yet" in message and "optim.optimizer.lr" in message


@pytest.mark.slow
def test_the_cli_prints_one_error_line_and_exits_2(tmp_path, tiny_corpus):
    command = [
        sys.executable,
        "train.py",
        *quick_overrides(tiny_corpus),
        "trainer.gradient_clip_val=-1",
        f"paths.root_dir={tmp_path}",
        f"paths.data_dir={DATA_DIR}",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: trainer.gradient_clip_val must be a finite number >= 0 or null (0 or null: no clipping), got -1"
    ]
    shown = subprocess.run(
        command,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HYDRA_FULL_ERROR": "1"},
    )
    assert shown.returncode != 0 and "Traceback" in shown.stderr
