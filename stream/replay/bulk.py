"""A share of replay held in memory: its settled requests counted at once, the others fed in time order.

A share (``shards``) whose input is at most ``MAX_BYTES`` reads all its records first. The
engine counts the requests that their own records settle as arrays (``Engine.take_settled``:
for a backtest, nearly all of them), and the others go through it one by one in timestamp order,
with event time moved to the settled records' times in between (``Engine.ticks``), so that its
sweeps, and the final partials they emit, fall where receiving every record would put them. The
counts, sweeps and partials are those of feeding every record (the shard tests hold the two
equal); only the last bits of ``label_lag_sum_s`` differ, as the order of its additions does.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from operator import itemgetter
from typing import TYPE_CHECKING

import numpy as np

from stream.core.engine import Engine
from stream.replay.progress import Progress
from stream.replay.shards import Occupancy

if TYPE_CHECKING:
    from stream.replay import Event, Outbox, _Inputs

__all__ = ["MAX_BYTES", "feed_all", "interleaved"]

MAX_BYTES = 256 << 20  # input (both kinds) whose share is held in memory: about 1.5 GiB of records at most


def feed_all(kinds: list[_Inputs], engine: Engine, sink: Outbox, files: list[list[tuple[str, bool]]] | None,
             progress: Progress) -> None:
    """Every record of the share's inputs through ``engine`` (see the module), then the end of input."""
    from stream.replay import FEED_EVENTS, receive

    events: list[list[Event]] = [[event for i in range(len(kind.found)) for event in kind.parsed(i, engine, progress)]
                                 for kind in kinds]
    taken = engine.take_settled([e[3] for e in events[0]], [e[3] for e in events[1]])  # type: ignore[misc]
    max_future_s = kinds[0].config.max_future_s
    stamps = []
    for kind, chosen in zip(kinds, events, strict=True):
        ts = np.fromiter((e[0] for e in chosen), np.float64, len(chosen))
        stamps.append(ts)
        if max_future_s > 0:  # every record counts (see ``shards.Occupancy``)
            kind.occupancy = Occupancy(max_future_s)
            kind.occupancy.note(ts)
    rest = sorted((e for chosen, mask in zip(events, taken, strict=True)
                   for e, took in zip(chosen, mask.tolist(), strict=True) if not took), key=itemgetter(0, 1, 2))
    del events
    ticks = engine.ticks(np.concatenate([ts[mask] for ts, mask in zip(stamps, taken, strict=True)]))
    for item in interleaved(rest, ticks, FEED_EVENTS):
        if type(item) is float:
            engine.observe(item)
        else:
            receive(engine, item, sink, files, progress)  # type: ignore[arg-type]
    engine.finish()
    sink.drain(engine)


def interleaved(events: list[Event], ticks: list[float], batch: int) -> Iterator[list[Event] | float]:
    """``events`` (in time order) in batches of at most ``batch``, with each of ``ticks`` (in time
    order) where it falls: after the events before it."""
    times = [e[0] for e in events]
    start = 0
    for tick in ticks:
        end = bisect_left(times, tick, start)
        for at in range(start, end, batch):
            yield events[at:min(end, at + batch)]
        start = end
        yield tick
    for at in range(start, len(events), batch):
        yield events[at:at + batch]
