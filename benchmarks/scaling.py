"""Scaling on one machine: 1 process x N threads against N processes x 1 thread, under DDP and FSDP.

    python benchmarks/scaling.py                               # gpt (BPE 8192) on PTB, 2 cores
    python benchmarks/scaling.py --model smollm2_135m --steps 6 --batch-size 2 --block-size 128
    python benchmarks/scaling.py --gpu                          # gpt2_124m on 1 GPU: tokens/s and MFU

Every arm is the real `train.py` in its own process(es), on the same global batch (N processes take
batch/N sequences each) and the same number of optimiser steps, validation off:
- `1 x N threads`: one process, OMP_NUM_THREADS=N (trainer=default);
- `ddp N x 1`: trainer=ddp, N processes of one thread each (gloo);
- `fsdp N x 1`: trainer=fsdp, the same with FSDP2 (each rank holds 1/N of weights, gradients and
  optimiser state).
tokens/s is the median of the run's logged `train/tokens_per_s` after its first logged step (start-up
and the first steps excluded); efficiency is tokens/s over the 1-process arm's. Peak memory per rank is
each training process's peak resident set (VmHWM from /proc, read while it runs): weights, gradients,
optimiser state, activations, and each process's copy of the corpus and of torch itself; `state per
rank` is what sharding divides: the weights, gradients and optimiser state a rank holds (its local
shards), printed by `lmdisc.callbacks.StateMemory` at the end of training.

`--gpu`: gpt2_124m, randomly initialised (no weights needed), bf16-mixed, one GPU, under trainer=ddp
and trainer=fsdp with devices=1 (their code paths, one rank). MFU is the run's logged `train/mfu`:
model FLOP/s over the GPU's dense bf16 peak from its specification (989 TFLOP/s for H100/H200 SXM),
with 6 N + 12 L T d FLOPs per token (`lmdisc.mfu`: PaLM's count, attention included).
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from machine import describe

REPO = Path(__file__).resolve().parents[1]
DATA = os.environ.get("LMDISC_DATA_DIR") or str(REPO.parent / "shared" / "data")

MODELS = {
    "gpt": [
        "model=gpt",
        "data.tokenizer=bpe",
        "data.vocab_size=8192",
        "optim=adamw",
        "optim.optimizer.lr=1e-3",
    ],
    "smollm2_135m": ["model=smollm2_135m", "ce_chunk_size=null", "optim=adamw", "optim.optimizer.lr=1e-5"],
    "gpt2_124m": ["model=gpt2_124m", "data.tokenizer=bpe", "data.vocab_size=8192", "optim=adamw"],
}


class PeakRSS(threading.Thread):
    """Polls /proc for the training processes under `root` and keeps each one's VmHWM (peak RSS)."""

    def __init__(self, root: int):
        super().__init__(daemon=True)
        self.root, self.peaks, self.done = root, {}, False

    def _descendants(self) -> list[int]:
        children, frontier = [], [self.root]
        while frontier:
            pid = frontier.pop()
            try:
                found = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            except OSError:
                continue
            frontier += [int(p) for p in found]
            children += [int(p) for p in found]
        return [self.root, *children]

    def run(self) -> None:
        while not self.done:
            for pid in self._descendants():
                try:
                    status = Path(f"/proc/{pid}/status").read_text()
                    command = Path(f"/proc/{pid}/cmdline").read_text()
                except OSError:
                    continue
                if "lmdisc.cli.train" not in command:
                    continue
                kb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")))
                self.peaks[pid] = max(self.peaks.get(pid, 0), kb)
            time.sleep(0.2)


def run_arm(name: str, overrides: list[str], threads: int, out: Path) -> dict:
    command = [sys.executable, "-m", "lmdisc.cli.train", *overrides, f"hydra.run.dir={out}"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    watcher = PeakRSS(process.pid)
    watcher.start()
    output, _ = process.communicate()
    watcher.done = True
    watcher.join()
    if process.returncode != 0:
        raise SystemExit(f"{name} failed:\n{output[-3000:]}")
    with open(out / "csv" / "version_0" / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    rates = [float(r["train/tokens_per_s"]) for r in rows if r.get("train/tokens_per_s")]
    mfu = [float(r["train/mfu"]) for r in rows if r.get("train/mfu")]
    if len(rates) < 2:
        raise SystemExit(f"{name}: too few logged steps to time ({len(rates)}); raise --steps")
    state = re.findall(
        r"training state of rank \d+: weights ([\d,]+) MB, gradients ([\d,]+) MB, optimiser ([\d,]+) MB",
        output,
    )
    return {
        "state_mb": [sum(int(x.replace(",", "")) for x in row) for row in state],
        "tokens_per_s": statistics.median(rates[1:]),
        "mfu": statistics.median(mfu[1:]) if len(mfu) > 1 else None,
        "peaks_mb": sorted(v / 1024 for v in watcher.peaks.values()),
    }


def common_overrides(args, batch: int) -> list[str]:
    return [
        *MODELS[args.model],
        f"data.path={DATA}/ptb",
        "data=ptb",
        "data.download=false",
        f"data.batch_size={batch}",
        f"data.block_size={args.block_size}",
        "trainer.max_epochs=1",
        f"trainer.limit_train_batches={args.steps}",
        "trainer.limit_val_batches=0",
        "trainer.num_sanity_val_steps=0",
        f"trainer.log_every_n_steps={args.log_every}",
        "callbacks.progress_bar=null",
        "trainer.enable_model_summary=false",
        "evaluate=false",
        "+callbacks.state_memory._target_=lmdisc.callbacks.StateMemory",
        f"paths.data_dir={DATA}",
    ]


def cpu_table(args) -> None:
    n = args.processes
    arms = {
        f"1 x {n} threads": (n, ["trainer=default", "trainer.accelerator=cpu"], args.batch_size),
        f"ddp {n} x 1": (
            1,
            ["trainer=ddp", "trainer.accelerator=cpu", f"trainer.devices={n}"],
            args.batch_size // n,
        ),
        f"fsdp {n} x 1": (
            1,
            ["trainer=fsdp", "trainer.accelerator=cpu", f"trainer.devices={n}"],
            args.batch_size // n,
        ),
    }
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (threads, trainer, batch) in arms.items():
            out = Path(tmp) / name.replace(" ", "_")
            results[name] = run_arm(name, [*common_overrides(args, batch), *trainer], threads, out)
    base = results[f"1 x {n} threads"]["tokens_per_s"]
    print(
        f"{args.model}: global batch {args.batch_size} x {args.block_size} tokens, {args.steps} steps, "
        f"tokens/s = median of train/tokens_per_s logged every {args.log_every} steps after the first"
    )
    print(f"{'arm':<18}{'tokens/s':>10}{'x 1 proc':>10}   {'state per rank (MB)':<22}peak RSS per rank (MB)")
    for name, row in results.items():
        state = ", ".join(f"{s:,}" for s in sorted(row["state_mb"]))
        peaks = ", ".join(f"{p:,.0f}" for p in row["peaks_mb"])
        print(
            f"{name:<18}{row['tokens_per_s']:>10,.0f}{row['tokens_per_s'] / base:>10.2f}   {state:<22}{peaks}"
        )


def gpu_table(args) -> None:
    print(
        "MFU: train/mfu as train.py logs it (lmdisc.mfu: 6 N + 12 L T d per token over the GPU's dense bf16 peak)"
    )
    print(f"{'arm':<14}{'tokens/s':>12}{'MFU':>8}   peak RSS (MB)")
    with tempfile.TemporaryDirectory() as tmp:
        for trainer in ("ddp", "fsdp"):
            overrides = [
                *common_overrides(args, args.batch_size),
                f"trainer={trainer}",
                "trainer.accelerator=gpu",
                "trainer.devices=1",
                "trainer.precision=bf16-mixed",
                f"model.block_size={args.block_size}",
            ]
            row = run_arm(trainer, overrides, 4, Path(tmp) / trainer)
            mfu = f"{row['mfu']:.1%}" if row["mfu"] is not None else "n/a"
            print(f"{trainer:<14}{row['tokens_per_s']:>12,.0f}{mfu:>8}   {row['peaks_mb'][0]:,.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gpt", choices=sorted(MODELS))
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16, help="global: split between the processes")
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--log-every", type=int, default=5)
    parser.add_argument("--gpu", action="store_true", help="gpt2_124m on one GPU: tokens/s and MFU")
    args = parser.parse_args()
    device = torch.device("cuda" if args.gpu else "cpu")
    print(describe(device))
    if args.gpu:
        if not torch.cuda.is_available():
            raise SystemExit("--gpu: no CUDA device here")
        args.model = "gpt2_124m"
        gpu_table(args)
    else:
        cpu_table(args)


if __name__ == "__main__":
    main()
