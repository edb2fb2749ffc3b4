"""Training throughput: our LightningModule vs a plain PyTorch loop, same model, same batches, one run.

    python benchmarks/throughput.py --model lstm_small --steps 200
    python benchmarks/throughput.py --model awd_lstm --steps 30
    python benchmarks/throughput.py --model lstm_small --losses ce,ppl_reg,ppl
    python benchmarks/throughput.py --model lstm_small --bptt 20 --losses ce,rkl_disc \\
        --init-from BASE.ckpt --disc-ckpt DISC.ckpt        # rkl_disc needs q_0 and a discriminator
    python benchmarks/throughput.py --model gpt --tokenizer bpe --vocab-size 8192 --batch-size 16 \\
        --block-size 256 --steps 60 --repeats 5 --eval-windows 40      # a transformer, + strided eval

Prints the machine and its measured matmul peak, tokens/s of the plain loop (with the first loss)
and of our module with each loss, the ratios ours/plain and loss/first loss, and peak memory (CPU:
growth of the heap in use; CUDA: max allocated). Every configuration runs `--repeats` times,
interleaved, and its median run is reported (all runs are printed), so one background hiccup does
not decide a ratio. With `--eval-windows`, also the tokens/s of evaluation by the model's protocol
(strided windows for a transformer). Like the CLIs it keeps freed CPU memory in the process
(lmdisc/allocator.py); LMDISC_KEEP_FREED_MEMORY=0 measures under glibc's default instead.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import statistics
import threading
import time

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from machine import describe

from lmdisc.allocator import heap_in_use_bytes, keep_freed_memory
from lmdisc.cli import CONF_DIR
from lmdisc.config import instantiate
from lmdisc.evaluation import evaluate_windows
from lmdisc.losses import BatchContext
from lmdisc.models import build_lm
from lmdisc.modules import LanguageModel
from lmdisc.window_loop import Reader


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


def autocast(device: torch.device, precision: str):
    if precision == "bf16-mixed":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def plain_loop(model, loss_fn, optimizer, batches, clip: float, device, precision: str) -> float:
    """The smallest correct loop (TBPTT for a recurrent model): what our module must not be much slower than."""
    model.train()
    reader = Reader(model, model.carries_state)
    tokens = 0
    start = time.perf_counter()
    for window in batches:
        inputs, targets = window.inputs.to(device), window.targets.to(device)
        with autocast(device, precision):
            logits, extras = reader(inputs)
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


def lightning_loop(module, datamodule, steps: int, clip: float, accelerator: str, precision: str) -> float:
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=1,
        max_steps=steps,
        precision=precision,
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
    parser.add_argument("--tokenizer", default="word", help="data.tokenizer (word, bpe)")
    parser.add_argument("--vocab-size", type=int, default=None, help="data.vocab_size for bpe")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--bptt", type=int, default=35)
    parser.add_argument(
        "--block-size", type=int, default=256, help="window of a transformer (blocks protocol)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    parser.add_argument("--losses", default="ce", help="comma-separated conf/loss options for our module")
    parser.add_argument(
        "--init-from", default=None, help="LM checkpoint: q_0 of rkl_disc (and the start weights)"
    )
    parser.add_argument("--disc-ckpt", default=None, help="discriminator checkpoint for rkl_disc")
    parser.add_argument("--eval-windows", type=int, default=0, help="also time this many evaluation windows")
    args = parser.parse_args()
    kept = keep_freed_memory()
    device = torch.device("cuda" if args.accelerator == "gpu" else "cpu")
    print(describe(device), flush=True)

    losses = args.losses.split(",")
    overrides = [
        f"model={args.model}",
        f"data={args.data}",
        f"data.tokenizer={args.tokenizer}",
        f"data.batch_size={args.batch_size}",
        f"data.bptt={args.bptt}",
        f"data.block_size={args.block_size}",
        "paths.root_dir=.",
        "paths.output_dir=/tmp/lmdisc-bench",
    ]
    if args.vocab_size:
        overrides.append(f"data.vocab_size={args.vocab_size}")
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
    datamodule = instantiate(cfg.data)
    torch.manual_seed(0)
    template = build_lm(cfg.model, datamodule.tokenizer)
    protocol = datamodule.bind_model(template)
    batches = [w for _, w in zip(range(args.steps), datamodule.train_dataloader())]
    clip = float(cfg.trainer.gradient_clip_val)
    print(
        f"model={args.model} params={sum(p.numel() for p in template.parameters()) / 1e6:.1f}M "
        f"{datamodule.tokenizer.describe()} {protocol.describe()} steps={len(batches)} batch={args.batch_size} "
        f"precision={args.precision} device={device} keep_freed_memory={kept}",
        flush=True,
    )

    names = ["plain", *(f"ours[{loss}]" for loss in losses)]
    results: dict[str, list[float]] = {name: [] for name in names}
    peaks: dict[str, float] = {}
    for _ in range(args.repeats):
        model = copy.deepcopy(template).to(device)
        optimizer = instantiate(cfg.optim.optimizer)(params=model.parameter_groups())
        with PeakMemory(device) as memory:
            results["plain"].append(
                plain_loop(model, instantiate(cfg.loss), optimizer, batches, clip, device, args.precision)
            )
        peaks["plain"] = max(peaks.get("plain", 0.0), memory.peak_mb)
        del model, optimizer
        for loss in losses:
            module = LanguageModel(
                model=copy.deepcopy(template),
                loss=instantiate(cfgs[loss].loss),
                optimizer=instantiate(cfg.optim.optimizer),
                bptt=args.bptt,
                carry_state=protocol.carries_state,
            )
            name = f"ours[{loss}]"
            with PeakMemory(device) as memory:
                results[name].append(
                    lightning_loop(module, datamodule, len(batches), clip, args.accelerator, args.precision)
                )
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
    if args.eval_windows:
        windows = [w for _, w in zip(range(args.eval_windows), datamodule.split_loader("valid"))]
        model = template.to(device)
        rates = []
        for _ in range(args.repeats):
            with autocast(device, args.precision):
                rates.append(evaluate_windows(model, windows, device, protocol.carries_state)["tokens_per_s"])
        runs = ", ".join(f"{r:,.0f}" for r in rates)
        print(
            f"evaluation ({protocol.describe()}): {statistics.median(rates):,.0f} scored tokens/s   runs: {runs}"
        )


if __name__ == "__main__":
    os.environ.setdefault("LMDISC_DATA_DIR", "data")
    main()
