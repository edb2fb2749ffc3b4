"""Keep freed CPU memory inside the process instead of handing it back to the kernel.

glibc serves every allocation above its mmap threshold (at most 32 MB) with a fresh mmap and
unmaps it on free, so a training step page-faults its largest tensors (a [batch·bptt, |V|] logits
tensor is 53 MB on WikiText-2) back in, zero-filled, every time. On a 2-core CPU that made a
WikiText-2 training 1.37x slower end to end (benchmarks/allocator.py). Serving them from the heap and
never trimming it keeps the pages mapped; the process then holds on to its peak memory.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import platform

OPT_OUT_ENV = "LMDISC_KEEP_FREED_MEMORY"
# mallopt parameter numbers from glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_NEVER_TRIM = 2**31 - 1  # mallopt takes an int


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    if hasattr(libc, "mallinfo2"):  # glibc >= 2.33
        libc.mallinfo2.restype = _MallInfo2
    return libc


def keep_freed_memory() -> bool:
    """Ask glibc to reuse freed memory; returns whether it did (not on other C libraries or OSes,
    nor with LMDISC_KEEP_FREED_MEMORY=0)."""
    libc = _glibc()
    if libc is None or os.environ.get(OPT_OUT_ENV, "1") == "0":
        return False
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM))


def heap_in_use_bytes() -> int | None:
    """Bytes malloc has handed out and not freed, over all arenas (glibc's mallinfo2), or None
    without glibc. Unlike the resident set it falls when memory is freed but kept."""
    libc = _glibc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        return None
    info = libc.mallinfo2()
    return info.uordblks + info.hblkhd
