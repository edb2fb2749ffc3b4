"""A run stopped mid-epoch by a signal and resumed from its checkpoint continues exactly as the
uninterrupted run: the same training objective at every later step, the same validation perplexity
and, on CPU with trainer.deterministic=true, bitwise the same final weights."""

import csv
import os
import signal

import pytest
import torch

import lmdisc.cli.train as train_cli
from helpers import compose_train, gpt_overrides, quick_overrides, run_cli, signal_at_step
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


def _steps(run_dir) -> dict[int, dict[str, str]]:
    rows = {}
    with open(run_dir / "csv" / "version_0" / "metrics.csv") as handle:
        for row in csv.DictReader(handle):
            rows.setdefault(int(row["step"]), {}).update({k: v for k, v in row.items() if v})
    return rows


def _weights(path):
    return torch.load(path, weights_only=True)["state_dict"]


def _logged(steps: dict, at, prefix: str = "") -> list[dict]:
    """The metrics named `prefix...` logged at steps `at`, without the wall-clock throughput."""
    return [
        {k: v for k, v in steps[s].items() if k.startswith(prefix) and k != "train/tokens_per_s"} for s in at
    ]


# (model, signal, the step before which it arrives), 10 batches an epoch: 4 is mid-way through epoch 1
# of 2 with the LSTM's validation due after it (skipped: the run stops first), 13 mid-way through the
# last epoch, 9 the last batch of epoch 1 (the checkpoint is then an epoch end)
STOPS = [("lstm", "SIGINT", 4), ("gpt", "SIGTERM", 13), ("lstm", "SIGTERM", 9)]


@pytest.mark.parametrize("case,signame,stop_at", STOPS)
def test_a_signal_then_resume_equals_the_uninterrupted_run(
    tmp_path, tiny_corpus, monkeypatch, case, signame, stop_at
):
    overrides = [*CASES[case](tiny_corpus), *COMMON]
    whole_run = train(compose_train(tmp_path / "whole", overrides))

    instantiate_callbacks = train_cli.instantiate_callbacks
    signum = getattr(signal, signame)
    with monkeypatch.context() as patch:
        patch.setattr(
            train_cli,
            "instantiate_callbacks",
            lambda *a: [*instantiate_callbacks(*a), signal_at_step(stop_at, signum)],
        )
        with pytest.raises(
            Preempted, match=rf"{signame} received: stopped after step {stop_at + 1} and saved"
        ):
            train(compose_train(tmp_path / "cut", overrides))
    assert signal.getsignal(signum) is not None  # the handlers were given back
    last = tmp_path / "cut" / "run" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == stop_at + 1

    resumed_run = train(compose_train(tmp_path / "resumed", [*overrides, f"ckpt_path={last}"]))
    assert resumed_run["global_step"] == whole_run["global_step"] == 20
    whole, cut, resumed = (_steps(tmp_path / run / "run") for run in ("whole", "cut", "resumed"))
    assert sorted(resumed) == [s for s in sorted(whole) if s > stop_at]
    # every step logged as uninterrupted: the cut run's up to the signal (its training metrics: a
    # validation due after the last step is skipped), the resumed run's after it
    assert _logged(cut, range(stop_at + 1), "train/") == _logged(whole, range(stop_at + 1), "train/")
    assert _logged(resumed, sorted(resumed)) == _logged(whole, sorted(resumed))
    first = _weights(tmp_path / "whole" / "run" / "checkpoints" / "last.ckpt")
    second = _weights(tmp_path / "resumed" / "run" / "checkpoints" / "last.ckpt")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


SAME = r": resume with the same (model|data) options"


@pytest.mark.parametrize(
    "change,message",
    [
        ("model.hidden_size=100", r"was trained with model.hidden_size=200 and this run has 100" + SAME),
        ("data.bptt=12", r"was trained with data.bptt=10 and this run has 12" + SAME),
        ("data.name=wikitext2", r"was trained with data.name='text' and this run has 'wikitext2'" + SAME),
        ("data.tokenizer=bpe data.vocab_size=300", r"has another tokenizer than the corpus: word tokenizer"),
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
    with pytest.raises(LmdiscError, match=message):
        train(compose_train(tmp_path, [*overrides, *change.split()]))


def _signal_at(step: int, signum: int, rank: int = 0) -> list[str]:
    """Overrides adding helpers.signal_at_step to a train.py run in another process."""
    return [
        "+callbacks.signal._target_=helpers.signal_at_step",
        f"+callbacks.signal.at={step}",
        f"+callbacks.signal.signum={int(signum)}",
        f"+callbacks.signal.rank={rank}",
    ]


@pytest.mark.multiprocess
def test_under_ddp_a_signal_to_one_rank_stops_both_and_the_resume_is_exact(tmp_path, tiny_corpus):
    """SIGTERM reaches rank 1 only: both ranks stop after the same step (they agree at its end),
    rank 0 saves every rank's RNG and position, and the 2-process resume equals the uninterrupted
    run. The LSTM draws dropout masks on each rank, so a rank resumed with another's RNG differs."""
    overrides = [
        *quick_overrides(tiny_corpus),
        "model.dropout=0.3",
        "trainer=ddp",
        "trainer.devices=2",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=8",
        "trainer.log_every_n_steps=1",
        "trainer.deterministic=true",
        "evaluate=false",
    ]
    run_cli("lmdisc.cli.train", overrides, tmp_path, tmp_path / "whole")
    stop = _signal_at(3, signal.SIGTERM, rank=1)
    stopped = run_cli(
        "lmdisc.cli.train", [*overrides, *stop], tmp_path, tmp_path / "cut", returncode=128 + signal.SIGTERM
    )
    assert "SIGTERM received: stopped after step 4" in stopped.stderr + stopped.stdout
    last = tmp_path / "cut" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 4

    resumed = run_cli("lmdisc.cli.train", [*overrides, f"ckpt_path={last}"], tmp_path, tmp_path / "resumed")
    # Lightning's warning that a mid-epoch resume is unreliable does not apply to our loaders
    assert "not resumable" not in resumed.stdout + resumed.stderr
    whole, cut, resumed = (_steps(tmp_path / run) for run in ("whole", "cut", "resumed"))
    assert _logged(cut, range(4)) == _logged(whole, range(4))  # every step logged, as uninterrupted
    assert _logged(resumed, range(4, 8)) == _logged(whole, range(4, 8))
    first = _weights(tmp_path / "whole" / "checkpoints" / "last.ckpt")
    second = _weights(tmp_path / "resumed" / "checkpoints" / "last.ckpt")
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_under_slurm_sigusr1_saves_requeues_and_the_requeued_job_resumes(tmp_path, tiny_corpus):
    """Lightning's SLURM auto-requeue, with a stand-in `scontrol` that records its arguments and then
    kills the job, as SLURM would: SIGUSR1 saves hpc_ckpt_1.ckpt and requeues the job by its id; the
    job started again in the same run directory resumes from that checkpoint and finishes."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" > {tmp_path / "scontrol_args"}\nkill -KILL $PPID\n')
    scontrol.chmod(0o755)
    slurm = {
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "train",
        "SLURM_NTASKS": "1",
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_NODELIST": "localhost",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
    }
    overrides = [
        *quick_overrides(tiny_corpus),
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=8",
        "evaluate=false",
    ]
    out = tmp_path / "run"
    usr1 = _signal_at(3, signal.SIGUSR1)
    run_cli("lmdisc.cli.train", [*overrides, *usr1], tmp_path, out, env=slurm, returncode=-signal.SIGKILL)
    assert (tmp_path / "scontrol_args").read_text().split() == ["requeue", "4242"]
    hpc = out / "hpc_ckpt_1.ckpt"
    assert torch.load(hpc, weights_only=True)["global_step"] == 3

    requeued = run_cli("lmdisc.cli.train", overrides, tmp_path, out, env=slurm)
    assert f"Restoring states from the checkpoint path at {hpc}" in requeued.stdout + requeued.stderr
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 16
