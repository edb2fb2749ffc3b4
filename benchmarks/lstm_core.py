"""The LSTM's recurrent core under bf16 autocast: run it in bf16 or keep it in fp32? Measured here for
lstm_small, lstm_medium and awd_lstm, whole training steps (forward, backward, SGD) side by side.

    python benchmarks/lstm_core.py                     # CPU, PTB's vocabulary, 20 x 35 (AWD: 20 x 70)
    python benchmarks/lstm_core.py --device cuda

Arms: fp32 throughout; bf16 autocast with the core in fp32 (the device in
`lmdisc.models.base.FP32_CORE_DEVICES`); bf16 autocast with the core in bf16. Each arm's tokens/s
is the median over `--repeats` rounds, the arms interleaved within a round so that a busy machine
slows them alike. Speed only: what bf16 costs in accuracy shows after a run to convergence.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
from machine import describe

from lmdisc.models import AWDLSTM, LSTMLanguageModel
from lmdisc.models import base as model_base

VOCAB = 10_000  # PTB's
MODELS = {
    "lstm_small": (lambda: LSTMLanguageModel(VOCAB, 200, 200, 2, dropout=0.0), 35),
    "lstm_medium": (lambda: LSTMLanguageModel(VOCAB, 650, 650, 2, dropout=0.5), 35),
    "awd_lstm": (lambda: AWDLSTM(VOCAB), 70),
}
ARMS = ("fp32", "bf16, core fp32", "bf16, core bf16")


def arm_context(arm: str, device: torch.device):
    if arm == "fp32":
        return contextlib.nullcontext()
    if arm.endswith("fp32"):
        model_base.FP32_CORE_DEVICES.add(device.type)
    else:
        model_base.FP32_CORE_DEVICES.discard(device.type)
    return torch.autocast(device.type, dtype=torch.bfloat16)


def step(model, optimizer, tokens, arm: str, device: torch.device) -> None:
    with arm_context(arm, device):
        logits, _, _ = model(tokens[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per arm per round")
    parser.add_argument("--repeats", type=int, default=5, help="rounds (the median is printed)")
    args = parser.parse_args()
    device = torch.device(args.device)
    saved = set(model_base.FP32_CORE_DEVICES)
    print(describe(device))
    print(f"{'model':<13}{'arm':<17}{'tokens/s':>10}{'x fp32':>8}{'x core fp32':>13}")
    for name in args.models.split(","):
        build, bptt = MODELS[name]
        torch.manual_seed(0)
        model = build().to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
        tokens = torch.randint(VOCAB, (args.batch_size, bptt + 1), device=device)
        rates: dict[str, list[float]] = {arm: [] for arm in ARMS}
        for arm in ARMS:  # warm-up
            step(model, optimizer, tokens, arm, device)
        for _ in range(args.repeats):
            for arm in ARMS:
                sync(device)
                start = time.perf_counter()
                for _ in range(args.steps):
                    step(model, optimizer, tokens, arm, device)
                sync(device)
                rates[arm].append(args.steps * tokens[:, 1:].numel() / (time.perf_counter() - start))
        median = {arm: statistics.median(r) for arm, r in rates.items()}
        for arm in ARMS:
            print(
                f"{name:<13}{arm:<17}{median[arm]:>10,.0f}{median[arm] / median['fp32']:>8.2f}"
                f"{median[arm] / median['bf16, core fp32']:>13.2f}"
            )
        model_base.FP32_CORE_DEVICES.clear()
        model_base.FP32_CORE_DEVICES.update(saved)


if __name__ == "__main__":
    main()
