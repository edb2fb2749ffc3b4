"""keep_freed_memory: a freed 64 MB tensor's pages are reused, not faulted in again."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

glibc_only = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only"
)
THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")
PAGES = 64 * 2**20 // os.sysconf("SC_PAGE_SIZE")  # a 64 MB tensor's pages

# Allocates and fills a 64 MB tensor (PAGES pages) 12 times to reach a steady state
# (glibc needs a few rounds: torch's aligned allocations do not fit the first freed chunk), then
# 8 times more, and prints whether the setting applied and the minor page faults of those 8.
PROBE = """
import resource, torch
from lmdisc.allocator import keep_freed_memory
applied = keep_freed_memory()
for _ in range(12):
    torch.ones(16 * 2**20)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(8):
    torch.ones(16 * 2**20)
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _probe(setting: str) -> tuple[bool, int]:
    env = {**os.environ, "LMDISC_KEEP_FREED_MEMORY": setting}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    applied, faults = out.stdout.split()
    return applied == "True", int(faults)


@glibc_only
def test_freed_pages_are_reused():
    applied, faults = _probe("1")
    assert applied
    assert faults < PAGES / 8  # 8 x PAGES would be faulted in again without it


@glibc_only
@pytest.mark.skipif(
    THP.is_file() and "[always]" in THP.read_text(), reason="huge pages fault in 2 MB at a time"
)
def test_opt_out_keeps_glibc_default():
    applied, faults = _probe("0")
    assert not applied
    assert faults > 8 * PAGES * 0.9  # the default allocator maps every round afresh


@glibc_only
def test_heap_in_use_counts_a_tensor_until_it_is_freed():
    import torch

    from lmdisc.allocator import heap_in_use_bytes

    before = heap_in_use_bytes()
    if before is None:
        pytest.skip("mallinfo2 needs glibc >= 2.33")
    tensor = torch.ones(16 * 2**20)  # 64 MB
    held = heap_in_use_bytes()
    del tensor
    after = heap_in_use_bytes()
    assert held - before == pytest.approx(64 * 2**20, rel=0.01)
    assert abs(after - before) < 2**20
