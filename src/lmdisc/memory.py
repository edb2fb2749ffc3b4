"""Will a window's logits fit? An estimate made before anything is allocated.

A [B, T, V] fp32 tensor of logits is the largest thing a language-model step holds: with a 33k
vocabulary, `data.bptt=100000` at batch 20 asks for 266 GB and takes a machine down instead of
failing. Training holds about three such tensors (logits, log-softmax, their gradient), evaluation
about two (logits, log-softmax); a chunked cross-entropy holds one chunk's worth instead.
"""

from __future__ import annotations

import torch

from lmdisc.errors import LmdiscError

LIVE_COPIES = {"training": 3, "evaluation": 2}


def available_bytes(device: torch.device) -> int | None:
    """Free memory of a CUDA device, or the host's available memory (Linux); None if unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _gb(n: float) -> str:
    return f"{n / 1e9:,.1f} GB"


def check_logits_fit(
    what: str, batch: int, length: int, vocab: int, device: torch.device, hint: str, chunk: int = 0
) -> None:
    """Refuse a window whose logits cannot fit, with the estimate and the memory available."""
    available = available_bytes(device)
    if available is None:
        return
    copies = LIVE_COPIES[what]
    positions = min(chunk, batch * length) if chunk else batch * length
    need = positions * vocab * 4 * copies
    if need > available:
        shape = f"{chunk:,} positions" if chunk else f"{batch:,} × {length:,}"
        raise LmdiscError(
            f"{what} logits would need ~{_gb(need)} ({shape} × {vocab:,} tokens × 4 bytes × {copies} live "
            f"copies) but {_gb(available)} is available on {device.type}; {hint}"
        )


def check_evaluation_fits(datamodule, vocab: int, device: torch.device, splits=("valid", "test")) -> None:
    """Refuse `splits` whose longest evaluation window's logits cannot fit, by the bound protocol."""
    protocol = datamodule.protocol
    corpus = datamodule.load()
    key = "data.bptt" if protocol.carries_state else "data.block_size"
    for split in splits:
        batch = protocol.eval_batch_size(split, datamodule.eval_batch_size)
        length = protocol.longest_window(len(corpus[split]), batch)
        check_logits_fit("evaluation", batch, length, vocab, device, f"lower data.eval_batch_size or {key}")
