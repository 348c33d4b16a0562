"""How replay's records fall in time, counted share by share and added: enough to tell whether one
process, reading every record in time order, would refuse one as stamped alone far in the future
(``core.clock.judge_in_time_order``), which no share can tell alone (``shards``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["Occupancy"]


class Occupancy:
    """The records of one kind per time bucket of ``max_future_s / 2``: how many, the first and the
    last timestamp. Two records in one bucket are closer than ``max_future_s``, so the occupancy of
    the whole input (every share's added) tells exactly whether one process would refuse a record as
    stamped alone in the future (``core.clock.judge_in_time_order``)."""

    def __init__(self, max_future_s: float) -> None:
        self.width_s = max_future_s / 2
        self.buckets: dict[int, list[float]] = {}  # bucket -> [count, first, last]

    def watch(self, events: Iterator[Any]) -> Iterator[Any]:
        """The events, each noted (at least cost in time order: a bucket's records one after another)."""
        buckets, width = self.buckets, self.width_s
        cell, start, end = [0, 0.0, 0.0], math.inf, -math.inf  # the bucket of the event before
        for event in events:
            ts = event[0]
            if not start <= ts < end:
                bucket = int(ts // width)
                start, end = bucket * width, (bucket + 1) * width
                found = buckets.get(bucket)
                if found is None:
                    buckets[bucket] = cell = [0, ts, ts]
                else:
                    cell = found
            cell[0] += 1
            if ts < cell[1]:
                cell[1] = ts
            elif ts > cell[2]:
                cell[2] = ts
            yield event

    def note(self, timestamps: npt.NDArray[np.float64]) -> None:
        """``watch`` for records at ``timestamps``, all at once."""
        if not len(timestamps):
            return
        ts = np.sort(timestamps)
        buckets = (ts // self.width_s).astype(np.int64)
        starts = np.flatnonzero(np.diff(buckets, prepend=buckets[0] - 1))
        ends = np.append(starts[1:], len(ts))
        other = Occupancy(2 * self.width_s)
        cells = zip(buckets[starts].tolist(), (ends - starts).tolist(), ts[starts].tolist(), ts[ends - 1].tolist(),
                    strict=True)
        other.buckets = {bucket: [count, first, last] for bucket, count, first, last in cells}
        self.add(other)

    def add(self, other: Occupancy) -> None:
        for bucket, (count, first, last) in other.buckets.items():
            cell = self.buckets.get(bucket)
            if cell is None:
                self.buckets[bucket] = [count, first, last]
            else:
                cell[0] += count
                cell[1], cell[2] = min(cell[1], first), max(cell[2], last)

    def refuses(self, max_future_s: float) -> bool:
        """Whether one process would refuse any record: one alone in its bucket, more than
        ``max_future_s`` after the record before it and before the one after it (or last)."""
        cells = [self.buckets[b] for b in sorted(self.buckets)]
        for i, (count, ts, _) in enumerate(cells):
            if count == 1 and i > 0 and ts - cells[i - 1][2] > max_future_s and (
                    i + 1 == len(cells) or cells[i + 1][1] - ts > max_future_s):
                return True
        return False
