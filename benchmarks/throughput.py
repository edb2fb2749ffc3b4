"""Training throughput: our LightningModule vs a plain PyTorch loop, same model, same batches, one run.

    python benchmarks/throughput.py --model lstm_small --steps 200
    python benchmarks/throughput.py --model awd_lstm --steps 30
    python benchmarks/throughput.py --model lstm_small --losses ce,ppl_reg,ppl
    python benchmarks/throughput.py --model lstm_small --bptt 20 --losses ce,rkl_disc \
        --init-from BASE.ckpt --disc-ckpt DISC.ckpt        # rkl_disc needs q_0 and a discriminator

Prints tokens/s of the plain loop (with the first loss) and of our module with each loss, the
ratios ours/plain and loss/first loss, and peak memory (CPU: growth of the heap in use; CUDA:
max allocated). Every configuration runs `--repeats` times, interleaved, and its median run is
reported (all runs are printed), so one background hiccup does not decide a ratio.
Like the CLIs it keeps freed CPU memory in the process (lmdisc/allocator.py);
LMDISC_KEEP_FREED_MEMORY=0 measures under glibc's default instead.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import threading
import time

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from lmdisc.allocator import heap_in_use_bytes, keep_freed_memory
from lmdisc.cli import CONF_DIR
from lmdisc.data import LMDataModule
from lmdisc.losses import BatchContext
from lmdisc.models import detach_state
from lmdisc.modules import LanguageModel


class PeakMemory:
    """Peak memory while the block runs: CUDA max allocated, or on CPU the growth of the heap in use
    (glibc's mallinfo2; the resident set elsewhere) over its value at entry, sampled every 5 ms.
    The resident set would hide the growth of a run that reuses memory kept from an earlier one."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_mb = 0.0

    @staticmethod
    def _cpu_mb() -> float:
        in_use = heap_in_use_bytes()
        if in_use is not None:
            return in_use / 2**20
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._max = max(self._max, self._cpu_mb())
            time.sleep(0.005)

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        else:
            self._start = self._max = self._cpu_mb()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak_mb = torch.cuda.max_memory_allocated() / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self.peak_mb = self._max - self._start


def plain_loop(model, loss_fn, optimizer, batches, clip: float, device) -> float:
    """The smallest correct TBPTT loop: what our module must not be much slower than."""
    model.train()
    state = None
    tokens = 0
    start = time.perf_counter()
    for inputs, targets in batches:
        inputs, targets = inputs.to(device), targets.to(device)
        logits, state, extras = model(inputs, state)
        state = detach_state(state)
        loss = loss_fn(logits, targets, BatchContext(inputs=inputs, extras=extras)).loss
        penalty = model.regularization_loss(extras)
        if penalty is not None:
            loss = loss + penalty
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        tokens += inputs.numel()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return tokens / (time.perf_counter() - start)


def lightning_loop(module, datamodule, steps: int, clip: float, accelerator: str) -> float:
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=1,
        max_steps=steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        gradient_clip_val=clip,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    return module.tokens_seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="lstm_small", help="a conf/model option")
    parser.add_argument("--data", default="ptb", help="a conf/data option")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--bptt", type=int, default=35)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--losses", default="ce", help="comma-separated conf/loss options for our module")
    parser.add_argument(
        "--init-from", default=None, help="LM checkpoint: q_0 of rkl_disc (and the start weights)"
    )
    parser.add_argument("--disc-ckpt", default=None, help="discriminator checkpoint for rkl_disc")
    args = parser.parse_args()
    kept = keep_freed_memory()

    losses = args.losses.split(",")
    overrides = [
        f"model={args.model}",
        f"data={args.data}",
        f"data.batch_size={args.batch_size}",
        f"data.bptt={args.bptt}",
        "paths.root_dir=.",
        "paths.output_dir=/tmp/lmdisc-bench",
    ]
    if args.init_from:
        overrides.append(f"init_from={args.init_from}")
    cfgs = {}
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        for loss in losses:
            extra = (
                [f"loss.discriminator_ckpt={args.disc_ckpt}"] if loss == "rkl_disc" and args.disc_ckpt else []
            )
            cfgs[loss] = compose("train", overrides=[*overrides, f"loss={loss}", *extra])
    cfg = cfgs[losses[0]]
    datamodule: LMDataModule = instantiate(cfg.data)
    vocab = datamodule.vocab
    device = torch.device("cuda" if args.accelerator == "gpu" else "cpu")
    batches = [b for _, b in zip(range(args.steps), datamodule.train_dataloader())]
    torch.manual_seed(0)
    template = instantiate(cfg.model, vocab_size=len(vocab))
    clip = float(cfg.trainer.gradient_clip_val)
    print(
        f"model={args.model} params={sum(p.numel() for p in template.parameters()) / 1e6:.1f}M "
        f"steps={len(batches)} batch={args.batch_size} bptt={args.bptt} threads={torch.get_num_threads()} "
        f"device={device} keep_freed_memory={kept}"
    )

    names = ["plain", *(f"ours[{loss}]" for loss in losses)]
    results: dict[str, list[float]] = {name: [] for name in names}
    peaks: dict[str, float] = {}
    for _ in range(args.repeats):
        model = copy.deepcopy(template).to(device)
        optimizer = instantiate(cfg.optim.optimizer)(params=model.parameters())
        with PeakMemory(device) as memory:
            results["plain"].append(
                plain_loop(model, instantiate(cfg.loss), optimizer, batches, clip, device)
            )
        peaks["plain"] = max(peaks.get("plain", 0.0), memory.peak_mb)
        del model, optimizer
        for loss in losses:
            module = LanguageModel(
                model=copy.deepcopy(template),
                loss=instantiate(cfgs[loss].loss),
                optimizer=instantiate(cfg.optim.optimizer),
                bptt=args.bptt,
                vocab=vocab.words,
            )
            name = f"ours[{loss}]"
            with PeakMemory(device) as memory:
                results[name].append(lightning_loop(module, datamodule, len(batches), clip, args.accelerator))
            peaks[name] = max(peaks.get(name, 0.0), memory.peak_mb)
            del module

    best = {name: statistics.median(runs) for name, runs in results.items()}
    unit = (
        "CUDA max allocated"
        if device.type == "cuda"
        else "growth of heap in use"
        if heap_in_use_bytes() is not None
        else "growth of resident memory"
    )
    for name in names:
        runs = ", ".join(f"{r:,.0f}" for r in results[name])
        print(f"{name:<16} {best[name]:10,.0f} tokens/s   peak {peaks[name]:7.0f} MB ({unit})   runs: {runs}")
    first = f"ours[{losses[0]}]"
    print(f"ratio {first}/plain: {best[first] / best['plain']:.3f}")
    for loss in losses[1:]:
        print(f"ratio ours[{loss}]/{first}: {best[f'ours[{loss}]'] / best[first]:.3f}")


if __name__ == "__main__":
    os.environ.setdefault("LMDISC_DATA_DIR", "data")
    main()
