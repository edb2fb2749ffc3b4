"""The machine a benchmark ran on, and its measured matmul peak: ratios are only comparable side by
side in one run, and absolute numbers only next to the machine that printed them."""

from __future__ import annotations

import os
import platform
import time

import torch


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def matmul_gflops(dtype: torch.dtype, device: torch.device, n: int = 2048, repeats: int = 10) -> float:
    """Sustained GFLOP/s of an n x n matmul in `dtype` (the best of three timings)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    best = float("inf")
    for _ in range(4):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 * repeats / best / 1e9


def describe(device: torch.device) -> str:
    """One line: the processor, threads, torch, and the measured fp32 / bf16 matmul peaks."""
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{cpu_name()}, {os.cpu_count()} cores"
    )
    peaks = ", ".join(
        f"{name} {matmul_gflops(dt, device):,.0f}"
        for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16))
    )
    return (
        f"machine: {where}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"matmul peak (GFLOP/s): {peaks}"
    )
