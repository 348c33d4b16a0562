"""glibc's malloc, tuned for a worker that keeps millions of small pending predictions."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from typing import Any

__all__ = ["M_MMAP_THRESHOLD", "glibc", "map_large_blocks_apart", "resident_bytes", "return_free_memory"]

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


@functools.cache
def glibc() -> Any:
    """glibc, for its malloc's settings; None under another C library."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018  (both present, or not glibc)
    except (OSError, AttributeError):
        return None
    return libc


def map_large_blocks_apart() -> None:
    """Have glibc's malloc give every block of 128 KiB or more its own mapping, returned to the
    system when freed. By default its threshold rises to the largest block freed so far, and later
    blocks of that size stay on its heap once freed (dict tables left behind as they double,
    rocksdb memtables): 262 against 211 bytes of RSS per pending prediction, 553 against 314 after
    a restart (benchmarks/run.py, 1M pending). Nothing happens off glibc."""
    libc = glibc()
    if libc is not None:
        libc.mallopt(M_MMAP_THRESHOLD, 128 * 1024)


def return_free_memory() -> None:
    """Hand the free pages inside glibc's heaps back to the system (``malloc_trim``): blocks under
    128 KiB freed between live ones leave holes that glibc keeps. With compressed batches the heap
    held about 9 MB more and a restarted worker 18 to 28 more bytes per pending prediction, which
    this returns (docs/worker.md). 0.2 ms at the median, 4 ms at most, once a second and after
    each rebuild."""
    libc = glibc()
    if libc is not None:
        libc.malloc_trim(0)


def resident_bytes() -> int:
    """The process's resident memory now (Linux's ``/proc/self/statm``), or 0 where unknown."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
