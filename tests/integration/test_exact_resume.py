"""A run stopped mid-epoch by a signal and resumed from its checkpoint continues exactly as the
uninterrupted run: the same training objective at every later step, the same validation perplexity
and, on CPU with trainer.deterministic=true, bitwise the same final weights."""

import csv
import os
import signal

import lightning as L
import pytest
import torch

import lmdisc.cli.train as train_cli
from helpers import compose_train, gpt_overrides, quick_overrides
from lmdisc.callbacks import Preempted
from lmdisc.cli.train import train

pytestmark = pytest.mark.slow

CASES = {
    # a stream with carried state and dropout, its validation twice an epoch
    "lstm": lambda corpus: [*quick_overrides(corpus), "model.dropout=0.3", "trainer.val_check_interval=0.5"],
    # random-offset blocks, shuffled, with noised inputs and dropout
    "gpt": lambda corpus: [*gpt_overrides(corpus), "data.noise=unigram", "data.noise_gamma=0.2"],
}
COMMON = [
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=10",
    "trainer.log_every_n_steps=1",
    "trainer.deterministic=true",
    "evaluate=false",
]


class SendSignal(L.Callback):
    """Sends this process `signum` just before training batch `at` (0-based over the run)."""

    def __init__(self, at: int, signum: int):
        self.at, self.signum = at, signum

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == self.at:
            os.kill(os.getpid(), self.signum)


def _steps(run_dir) -> dict[int, dict[str, str]]:
    rows = {}
    with open(run_dir / "csv" / "version_0" / "metrics.csv") as handle:
        for row in csv.DictReader(handle):
            rows.setdefault(int(row["step"]), {}).update({k: v for k, v in row.items() if v})
    return rows


def _weights(path):
    return torch.load(path, weights_only=True)["state_dict"]


# (model, signal, the step before which it arrives): 10 batches an epoch, so 13 is mid-epoch 2 and 9
# the last batch of epoch 1 (the checkpoint is then an epoch end)
STOPS = [("lstm", "SIGTERM", 13), ("lstm", "SIGINT", 13), ("gpt", "SIGTERM", 13), ("lstm", "SIGTERM", 9)]


@pytest.mark.parametrize("case,signame,stop_at", STOPS)
def test_a_signal_then_resume_equals_the_uninterrupted_run(
    tmp_path, tiny_corpus, monkeypatch, case, signame, stop_at
):
    overrides = [*CASES[case](tiny_corpus), *COMMON]
    whole = train(compose_train(tmp_path / "whole", overrides))

    instantiate_callbacks = train_cli.instantiate_callbacks
    signum = getattr(signal, signame)
    with monkeypatch.context() as patch:
        patch.setattr(
            train_cli,
            "instantiate_callbacks",
            lambda *a: [*instantiate_callbacks(*a), SendSignal(stop_at, signum)],
        )
        with pytest.raises(
            Preempted, match=rf"{signame} received: stopped after step {stop_at + 1} and saved"
        ):
            train(compose_train(tmp_path / "cut", overrides))
    assert signal.getsignal(signum) is not None  # the handlers were given back
    last = tmp_path / "cut" / "run" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == stop_at + 1

    resumed = train(compose_train(tmp_path / "resumed", [*overrides, f"ckpt_path={last}"]))
    assert resumed["global_step"] == whole["global_step"] == 20
    before, after = _steps(tmp_path / "whole" / "run"), _steps(tmp_path / "resumed" / "run")
    later = [step for step in before if step > stop_at + 1]
    assert later and all(
        before[s].get(k) == after[s].get(k)
        for s in later
        for k in ("train/objective", "val/ppl", "train/ppl", "train/grad_norm")
    ), [(s, before[s], after.get(s)) for s in later if before[s] != after.get(s)][:2]
    first = _weights(tmp_path / "whole" / "run" / "checkpoints" / "last.ckpt")
    second = _weights(tmp_path / "resumed" / "run" / "checkpoints" / "last.ckpt")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.parametrize(
    "change,message",
    [
        ("model.hidden_size=100", r"was trained with model.hidden_size=200 and this run has 100"),
        ("data.bptt=12", r"was trained with data.bptt=10 and this run has 12"),
        ("data.name=wikitext2", r"was trained with data.name='text' and this run has 'wikitext2'"),
    ],
)
def test_resuming_a_checkpoint_of_another_configuration_is_refused(
    trained_run, tiny_corpus, tmp_path, change, message
):
    from lmdisc.errors import LmdiscError

    last = trained_run[0] / "checkpoints" / "last.ckpt"
    overrides = [
        *quick_overrides(tiny_corpus),
        "trainer.max_epochs=4",
        "optim.optimizer.lr=5",
        f"ckpt_path={last}",
    ]
    with pytest.raises(LmdiscError, match=message + r": resume with the same (model|data) options"):
        train(compose_train(tmp_path, [*overrides, change]))
