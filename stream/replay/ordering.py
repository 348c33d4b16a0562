"""Input records in timestamp order with bounded memory: an external merge sort.

Records are gathered in runs of ``run_events``; a run that fills is sorted and spilled to a
temporary file (pickled in blocks, each packed first by the caller's ``Codec``: plain tuples
pickle several times faster than objects), and the runs are merged back with ``heapq.merge``,
reading one block of each at a time. Input that fits in one run never touches the disk. Memory is about
``run_events`` records while reading, and the last run (never spilled) plus ``runs x BLOCK_EVENTS``
while merging.

>>> events = [(3.0, 0, 1, "c"), (1.0, 0, 2, "a"), (2.0, 0, 3, "b")]
>>> [e[3] for e in external_sort(iter(events), run_events=2)]
['a', 'b', 'c']
"""

from __future__ import annotations

import heapq
import pickle
import tempfile
from collections.abc import Callable, Iterator
from typing import IO, Any, NamedTuple

__all__ = ["BLOCK_EVENTS", "RUN_EVENTS", "Codec", "external_sort"]

RUN_EVENTS = 250_000
BLOCK_EVENTS = 1024
Events = list[tuple[Any, ...]]


class Codec(NamedTuple):
    """A block of events to what is pickled (``pack``), and back (``unpack``)."""

    pack: Callable[[Events], Any]
    unpack: Callable[[Any], Events]


PLAIN = Codec(lambda block: block, lambda block: block)


def external_sort(events: Iterator[tuple[Any, ...]], run_events: int = RUN_EVENTS, folder: str | None = None,
                  codec: Codec = PLAIN) -> Iterator[tuple[Any, ...]]:
    """``events`` sorted as tuples. Their first three fields must tell any two apart, so that the
    rest is never compared."""
    runs: list[IO[bytes]] = []
    run: list[tuple[Any, ...]] = []
    try:
        for event in events:
            run.append(event)
            if len(run) >= run_events:
                runs.append(_spill(run, folder, codec.pack))
                run = []
        run.sort()
        if not runs:
            yield from run
            return
        yield from heapq.merge(*(_read(f, codec.unpack) for f in runs), run)  # the last run stays in memory
    finally:
        for f in runs:
            f.close()


def _spill(run: Events, folder: str | None, pack: Callable[[Events], Any]) -> IO[bytes]:
    run.sort()
    f = tempfile.TemporaryFile(dir=folder, prefix="mlmon-sort-")  # noqa: SIM115 (closed by external_sort)
    for start in range(0, len(run), BLOCK_EVENTS):
        pickle.dump(pack(run[start:start + BLOCK_EVENTS]), f, protocol=pickle.HIGHEST_PROTOCOL)
    f.seek(0)
    return f


def _read(f: IO[bytes], unpack: Callable[[Any], Events]) -> Iterator[tuple[Any, ...]]:
    while True:
        try:
            block = pickle.load(f)
        except EOFError:
            return
        yield from unpack(block)
