"""Cost of an rkl_disc training step against a CE step: time side by side, and peak memory.

    python benchmarks/rkl_cost.py --model gpt --batch-size 16 --block-size 256       # BPE 8192
    python benchmarks/rkl_cost.py --model smollm2_135m --precision bf16-mixed --batch-size 4 \\
        --block-size 256 --steps 2 --repeats 3                                          # 49,152 tokens
    python benchmarks/rkl_cost.py --model gpt --accelerator gpu                          # on CUDA

A step is forward + backward + clipping + optimiser step of our LightningModule inside a Lightning
Trainer, timed from `on_train_batch_start` to `on_train_batch_end`. Arms (`--arms`):
- `ce`: cross-entropy, in chunks of `ce_chunk_size` positions when the model's config sets it
  (smollm2_135m: 2048) or `--chunk-size` does;
- `rkl`: CE + λ·rKL with q_0 a frozen copy of the model and a frequency-class discriminator (s per
  token id, random class logits), with the same chunk setting: the chunked fused path;
- `control`: the same with s ≡ 0 (loss.discriminator=none);
- `rkl_lm_frozen`: a discriminator on q_0's frozen features (`lm_frozen`, shared body);
- `rkl_logits`: `rkl` with all [B, T, V] logits at once (no chunking), the plain reference path;
- `ce_logits`: `ce` with all logits at once.
Every round builds each arm afresh from one template and runs `--warmup` untimed steps, then
`--steps` timed ones; rounds repeat `--repeats` times with the arms interleaved, and each arm's
median step is reported with its ratio to `ce` (and the median of the per-round paired ratios), in
wall time and, on CPU, in CPU time of the process (all threads, less the memory sampler's own), which
other processes on a shared machine disturb less than the wall clock.

Memory: on CUDA, `torch.cuda.max_memory_allocated`. On CPU, the bytes malloc has handed out and
not freed (glibc's mallinfo2: the heap in use, which freed-but-kept memory does not inflate),
sampled every millisecond by a thread (a peak shorter than that can be missed). Two numbers:
`step peak` is the largest rise during one step over the memory in use when it starts (activations,
logits or their chunks, gradients, the frozen models' forward); `total peak` is the largest memory
in use over the arm's run above what it was before the arm was built (model copy, q_0, optimiser
state, gradients and the step's own peak). Steps run without the logged-step diagnostics unless
`--diagnostics` (then every step computes them, as a logged step does).
"""

from __future__ import annotations

import argparse
import copy
import gc
import os
import statistics
import threading
import time

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from machine import describe
from omegaconf import OmegaConf

from lmdisc.allocator import heap_in_use_bytes, keep_freed_memory
from lmdisc.analysis.frequency import token_classes
from lmdisc.cli import CONF_DIR
from lmdisc.config import instantiate
from lmdisc.finetune import plan_finetune
from lmdisc.losses import CompositeLoss, CrossEntropyLoss, ReverseKLLoss
from lmdisc.models import build_lm
from lmdisc.models.discriminator import build_discriminator
from lmdisc.modules import LanguageModel

ARMS = ("ce", "ce_logits", "rkl", "control", "rkl_lm_frozen", "rkl_logits")


class Memory:
    """Memory in use now, and its peak since `mark()` (see the module docstring for what it is)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self._max = 0
        self.sampler_cpu = 0.0  # CPU seconds this sampler has used, left out of the steps' CPU time
        if not self.cuda:
            if heap_in_use_bytes() is None:
                raise SystemExit("CPU memory needs glibc's mallinfo2 (Linux, glibc >= 2.33)")
            self._lock = threading.Lock()  # else a sample read before mark() can overwrite its reset
            threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while True:
            with self._lock:
                self._max = max(self._max, heap_in_use_bytes())
                self.sampler_cpu = time.thread_time()
            time.sleep(0.001)

    def cpu_seconds(self) -> float:
        """CPU time of the process (all threads) without the sampler's own."""
        if self.cuda:
            return 0.0
        with self._lock:
            return time.process_time() - self.sampler_cpu

    def now(self) -> int:
        return torch.cuda.memory_allocated() if self.cuda else heap_in_use_bytes()

    def mark(self) -> int:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            return self.now()
        with self._lock:
            self._max = current = self.now()
        return current

    def peak(self) -> int:
        if self.cuda:
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated()
        with self._lock:
            return max(self._max, heap_in_use_bytes())


class StepProbe(L.Callback):
    """Wall time, CPU time and peak memory of each training step after the first `warmup`."""

    def __init__(self, memory: Memory, warmup: int, arm_base: int):
        self.memory, self.warmup, self.arm_base = memory, warmup, arm_base
        self.times: list[float] = []
        self.cpu_times: list[float] = []
        self.step_peaks: list[int] = []
        self.total_peak = 0

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self._start_mem = self.memory.mark()
        self._start = time.perf_counter()
        self._start_cpu = self.memory.cpu_seconds()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        peak = self.memory.peak()
        elapsed = time.perf_counter() - self._start
        cpu = self.memory.cpu_seconds() - self._start_cpu
        self.total_peak = max(self.total_peak, peak - self.arm_base)
        if batch_idx >= self.warmup:
            self.times.append(elapsed)
            self.cpu_times.append(cpu)
            self.step_peaks.append(peak - self._start_mem)


def build_loss(arm: str, template, word_class: torch.Tensor, lam: float):
    terms = {"ce": {"weight": 1.0, "loss": CrossEntropyLoss("token_mean")}}
    if not arm.startswith("ce"):
        reference = copy.deepcopy(template)
        if arm in ("rkl", "rkl_logits"):
            disc = build_discriminator("freq_class", template.vocab_size, word_class=word_class)
            with torch.no_grad():
                disc.class_logit.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(0))
        elif arm == "rkl_lm_frozen":
            disc = build_discriminator("lm_frozen", template.vocab_size, reference)
            with torch.no_grad():
                disc.head.weight.normal_(0.0, 0.01, generator=torch.Generator().manual_seed(0))
        else:
            disc = None
        terms["rkl"] = {"weight": lam, "loss": ReverseKLLoss(reference, disc)}
    return CompositeLoss(terms)


def run_arm(arm, template, cfg, datamodule, word_class, args, device, memory) -> tuple[StepProbe, int]:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    arm_base = memory.mark()
    chunk = 0 if arm.endswith("_logits") else args.chunk_size
    model = copy.deepcopy(template)
    # finetune.mode (--set finetune.mode=lora): the parameters train.py would train
    options = OmegaConf.to_container(cfg.finetune, resolve=True) if cfg.get("finetune") else None
    plan = plan_finetune(model, options, pretrained=True)
    module = LanguageModel(
        model=model,
        loss=build_loss(arm, template, word_class, args.lam),
        finetune_plan=plan,
        optimizer=instantiate(cfg.optim.optimizer),
        bptt=cfg.data.bptt,
        carry_state=False,
        ce_chunk_size=chunk,
    )
    probe = StepProbe(memory, args.warmup, arm_base)
    trainer = L.Trainer(
        accelerator=args.accelerator,
        devices=1,
        max_steps=args.warmup + args.steps,
        precision=args.precision,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        gradient_clip_val=1.0,
        log_every_n_steps=1 if args.diagnostics else 10**9,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        callbacks=[probe],
    )
    trainer.fit(module, datamodule=datamodule)
    used_chunk = module.chunk_size
    del module, trainer
    return probe, used_chunk


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="gpt", help="a conf/model option (gpt, smollm2_135m, ...)")
    parser.add_argument("--data", default="ptb")
    parser.add_argument(
        "--tokenizer", default=None, help="data.tokenizer (default: bpe, or hf for hf models)"
    )
    parser.add_argument("--vocab-size", type=int, default=8192, help="data.vocab_size for bpe")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per arm and round")
    parser.add_argument("--warmup", type=int, default=1, help="untimed first steps per arm and round")
    parser.add_argument("--repeats", type=int, default=3, help="rounds, arms interleaved")
    parser.add_argument("--accelerator", default="auto", choices=["auto", "cpu", "gpu"])
    parser.add_argument(
        "--precision", default=None, help="32-true or bf16-mixed (default: bf16-mixed for hf)"
    )
    parser.add_argument("--optim", default="adamw")
    parser.add_argument(
        "--chunk-size",
        type=int,
        default=None,
        help="positions per chunk (default: the config's ce_chunk_size)",
    )
    parser.add_argument("--arms", default="ce,rkl,control,rkl_logits", help=f"comma-separated, of {ARMS}")
    parser.add_argument("--lam", type=float, default=1.0, help="weight of the rKL term")
    parser.add_argument("--diagnostics", action="store_true", help="compute the logged-step diagnostics")
    parser.add_argument(
        "--set", nargs="*", default=[], help="more Hydra overrides, e.g. model.activation_checkpointing=true"
    )
    args = parser.parse_args()
    arms = args.arms.split(",")
    if unknown := set(arms) - set(ARMS):
        parser.error(f"unknown arms {sorted(unknown)}; choose from {ARMS}")
    if args.accelerator == "auto":
        args.accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    device = torch.device("cuda" if args.accelerator == "gpu" else "cpu")
    kept = keep_freed_memory()
    print(describe(device), flush=True)

    overrides = [
        f"model={args.model}",
        f"data={args.data}",
        f"optim={args.optim}",
        f"data.batch_size={args.batch_size}",
        f"data.block_size={args.block_size}",
        "data.train_eval_tokens=0",
        "paths.output_dir=/tmp/lmdisc-bench",
        *args.set,
    ]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        probe_cfg = compose("train", overrides=overrides)
        is_hf = probe_cfg.data.tokenizer == "hf"
        tokenizer = args.tokenizer or ("hf" if is_hf else "bpe")
        extra = [f"data.tokenizer={tokenizer}"] + (
            [f"data.vocab_size={args.vocab_size}"] if tokenizer == "bpe" else []
        )
        cfg = compose("train", overrides=[*overrides, *extra])
    args.precision = args.precision or ("bf16-mixed" if is_hf else "32-true")
    if args.chunk_size is None:
        args.chunk_size = int(cfg.get("ce_chunk_size") or 0)
    datamodule = instantiate(cfg.data)
    torch.manual_seed(0)
    template = build_lm(cfg.model, datamodule.tokenizer)
    datamodule.bind_model(template, training=True)
    word_class, _ = token_classes(datamodule.load()["train"].ids, template.vocab_size)
    params = sum(p.numel() for p in template.parameters()) / 1e6
    print(
        f"model={args.model} params={params:.1f}M V={template.vocab_size:,} batch={args.batch_size}x"
        f"{args.block_size} ({args.batch_size * args.block_size:,} positions) precision={args.precision} "
        f"optim={args.optim} chunk={args.chunk_size or 'none'} device={device} keep_freed_memory={kept} "
        f"threads={torch.get_num_threads()} diagnostics={args.diagnostics} overrides={args.set} "
        f"load={os.getloadavg()[0]:.2f}",
        flush=True,
    )

    memory = Memory(device)
    times: dict[str, list[float]] = {arm: [] for arm in arms}
    cpu_times: dict[str, list[float]] = {arm: [] for arm in arms}
    round_medians: dict[str, list[float]] = {arm: [] for arm in arms}
    step_peaks: dict[str, list[int]] = {arm: [] for arm in arms}
    total_peaks: dict[str, int] = dict.fromkeys(arms, 0)
    chunks: dict[str, int] = {}
    for round_index in range(args.repeats):
        for arm in arms:
            probe, chunks[arm] = run_arm(arm, template, cfg, datamodule, word_class, args, device, memory)
            times[arm] += probe.times
            cpu_times[arm] += probe.cpu_times
            round_medians[arm].append(statistics.median(probe.times))
            step_peaks[arm] += probe.step_peaks
            total_peaks[arm] = max(total_peaks[arm], probe.total_peak)
            print(
                f"round {round_index + 1} {arm:<14} steps (s): {', '.join(f'{t:.3f}' for t in probe.times)}  "
                f"CPU (s): {', '.join(f'{t:.2f}' for t in probe.cpu_times)}  "
                f"step peak {max(probe.step_peaks) / 2**20:,.0f} MB  total peak {probe.total_peak / 2**20:,.0f} MB",
                flush=True,
            )

    unit = "CUDA max allocated" if device.type == "cuda" else "heap in use (mallinfo2), sampled every 1 ms"
    positions = args.batch_size * args.block_size
    print(f"\nmemory: {unit}; load average at the end {os.getloadavg()[0]:.2f}")
    header = f"{'arm':<14} {'chunk':>6} {'median s/step':>14} {'tokens/s':>9} {'x ce':>6} {'paired x ce':>12}"
    print(
        f"{header} {'CPU s/step':>11} {'x ce':>6} {'step peak MB':>13} {'x ce':>6} {'total peak MB':>14} {'x ce':>6}"
    )
    has_ce = "ce" in arms

    def ratio(value: float, base: float) -> str:
        return f"{value / base:6.2f}" if has_ce else f"{'-':>6}"

    for arm in arms:
        median, cpu = statistics.median(times[arm]), statistics.median(cpu_times[arm])
        step_peak, total_peak = max(step_peaks[arm]), total_peaks[arm]
        paired = (
            f"{statistics.median(a / c for a, c in zip(round_medians[arm], round_medians['ce'])):12.2f}"
            if has_ce
            else f"{'-':>12}"
        )
        ce_time = statistics.median(times["ce"]) if has_ce else 1.0
        ce_cpu = statistics.median(cpu_times["ce"]) if has_ce else 1.0
        ce_step, ce_total = (max(step_peaks["ce"]), total_peaks["ce"]) if has_ce else (1, 1)
        print(
            f"{arm:<14} {chunks[arm] or 'none':>6} {median:14.3f} {positions / median:9,.0f} "
            f"{ratio(median, ce_time)} {paired} {cpu:11.2f} {ratio(cpu, ce_cpu)} "
            f"{step_peak / 2**20:13,.0f} {ratio(step_peak, ce_step)} {total_peak / 2**20:14,.0f} "
            f"{ratio(total_peak, ce_total)}"
        )


if __name__ == "__main__":
    os.environ.setdefault("LMDISC_DATA_DIR", "data")
    main()
