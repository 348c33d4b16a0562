"""How often CPython's cyclic garbage collector runs while mlmon moves records.

Replay and the worker allocate millions of small container objects that live a while and form no
cycles: records waiting in a sort run, the engine's batches, pairs waiting to be counted. With
CPython's default thresholds (700, 10, 10) the collector walks the surviving ones again and again:
a third of replay's time on shuffled input (``benchmarks/replay.py``), less for the engine alone.
``THRESHOLDS`` collects the youngest generation every 10,000 net allocations instead of 700 and
the oldest ten times less often; cycles are still found, a little later. The replay engine (the CLI,
``Monitor``) sets them while it runs and gives back the caller's afterwards; the worker, a process
of its own, sets them for good.

>>> import gc
>>> before = gc.get_threshold()
>>> with fewer_collections():
...     gc.get_threshold() == THRESHOLDS
True
>>> gc.get_threshold() == before
True
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

__all__ = ["THRESHOLDS", "fewer_collections"]

THRESHOLDS = (10_000, 10, 100)


@contextlib.contextmanager
def fewer_collections() -> Iterator[None]:
    """``THRESHOLDS`` while the block runs; the thresholds found before it afterwards."""
    before = gc.get_threshold()
    gc.set_threshold(*THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*before)
