"""Training throughput: our LightningModule vs a plain PyTorch loop, same model, same batches, one run.

    python benchmarks/throughput.py --model lstm_small --steps 200
    python benchmarks/throughput.py --model awd_lstm --steps 30

Prints tokens/s of both, their ratio (ours / plain) and peak memory (CPU: max RSS growth;
CUDA: max allocated). Each side runs `--repeats` times, alternating, and the best is reported,
so a background hiccup does not decide the ratio.
"""

from __future__ import annotations

import argparse
import copy
import os
import resource
import time

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from lmdisc.cli import CONF_DIR
from lmdisc.data import LMDataModule
from lmdisc.losses import BatchContext
from lmdisc.models import detach_state
from lmdisc.modules import LanguageModel


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


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
    args = parser.parse_args()

    overrides = [
        f"model={args.model}",
        f"data={args.data}",
        f"data.batch_size={args.batch_size}",
        f"data.bptt={args.bptt}",
        "paths.root_dir=.",
        "paths.output_dir=/tmp/lmdisc-bench",
    ]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides)
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
        f"device={device}"
    )

    results: dict[str, list[float]] = {"plain": [], "ours": []}
    peaks: dict[str, float] = {}
    for _ in range(args.repeats):
        model = copy.deepcopy(template).to(device)
        optimizer = instantiate(cfg.optim.optimizer)(params=model.parameters())
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        results["plain"].append(plain_loop(model, instantiate(cfg.loss), optimizer, batches, clip, device))
        peaks["plain"] = max(peaks.get("plain", 0.0), _peak_mb(device))

        module = LanguageModel(
            model=copy.deepcopy(template),
            loss=instantiate(cfg.loss),
            optimizer=instantiate(cfg.optim.optimizer),
            bptt=args.bptt,
            vocab=vocab.words,
        )
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        results["ours"].append(lightning_loop(module, datamodule, len(batches), clip, args.accelerator))
        peaks["ours"] = max(peaks.get("ours", 0.0), _peak_mb(device))

    plain, ours = max(results["plain"]), max(results["ours"])
    print(
        f"plain PyTorch loop : {plain:10,.0f} tokens/s  (runs: {', '.join(f'{r:,.0f}' for r in results['plain'])})"
    )
    print(
        f"lmdisc LanguageModel: {ours:10,.0f} tokens/s  (runs: {', '.join(f'{r:,.0f}' for r in results['ours'])})"
    )
    print(f"ratio ours/plain   : {ours / plain:.3f}")
    unit = "max allocated" if device.type == "cuda" else "process max RSS, cumulative"
    print(f"peak memory ({unit}): plain {peaks['plain']:.0f} MB, ours {peaks['ours']:.0f} MB")


if __name__ == "__main__":
    os.environ.setdefault("LMDISC_DATA_DIR", "data")
    main()
