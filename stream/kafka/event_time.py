"""Event time in the worker: how far each input partition has been read, and each join
partition's watermark.

A join partition takes records from two places: its own partition of each co-partitioned input
topic, read directly, and the repartition topic, which carries records other partitions
forwarded (see :mod:`stream.kafka.routing`). Its watermark is the lowest event time among

- its own input partitions, as read here;
- every other input partition, as the heartbeats read *on this join partition's repartition
  partition* say (a heartbeat follows everything its sender forwarded there before it);

leaving out inputs that are idle (no records for ``idle_timeout_s`` of wall-clock time, nothing
waiting to be read), as Flink's idleness does; when every input is idle, the furthest any was
read. A watermark never moves back; it is stored with the partition's batches, and heartbeats are
read again after a restart.

>>> times = EventTimes(["predictions/0", "labels/0", "predictions/1", "labels/1"], own={"predictions", "labels"})
>>> times.read("predictions", 0, 100.0); times.read("labels", 0, 90.0)
>>> times.advance([0])  # nothing heard from partition 1's inputs yet
{}
>>> times.hear(0, {"predictions/1": 95.0, "labels/1": 120.0}, idle=set())
>>> times.advance([0])
{0: 90.0}
"""

from __future__ import annotations

import math
from collections.abc import Iterable

__all__ = ["EventTimes"]


class EventTimes:
    def __init__(self, sources: Iterable[str], own: set[str]) -> None:
        self.sources = [(name, *_parts(name)) for name in sorted(sources)]  # every input partition
        self.own = own  # inputs co-partitioned with the join (a join partition reads its own directly)
        # input -> partition -> the latest timestamp read (or stored) here; and read by this process
        # since its rebuild (by input name first: no string is made per record)
        self.read_to: dict[str, dict[int, float]] = {"predictions": {}, "labels": {}}
        self.read_now: dict[str, dict[int, float]] = {"predictions": {}, "labels": {}}
        self.low: dict[int, float] = {}  # join partition -> its watermark
        self.heard: dict[int, dict[str, float]] = {}  # join partition -> input partition -> event time
        self.heard_idle: dict[int, set[str]] = {}
        self.idle: set[str] = set()  # input partitions read here that are idle
        self.activity: dict[str, tuple[int | None, float]] = {}  # (last offset, since when)
        self.refreshed = -math.inf  # when refresh_idle last ran (monotonic)

    def clear(self) -> None:
        """Before a rebuild: what is stored is restored; heartbeats are read again. What this
        process read stays (``read_now``): it forwarded those records, and a rebuild does not drop
        a forward it has not sent yet."""
        for marks in self.read_to.values():
            marks.clear()
        self.low.clear()
        self.heard.clear()
        self.heard_idle.clear()
        self.activity.clear()

    def read(self, source: str, partition: int, ts: float) -> None:
        """A record of input ``source`` (``predictions``, ``labels``) read from ``partition``."""
        now = self.read_now[source]
        if ts > now.get(partition, -math.inf):
            now[partition] = ts
            read_to = self.read_to[source]
            if ts > read_to.get(partition, -math.inf):
                read_to[partition] = ts

    def read_mark(self, source: str, partition: int) -> float:
        """How far an input partition was read (or stored, before a restart)."""
        return self.read_to[source].get(partition, -math.inf)

    def watermark(self, partition: int) -> float:
        return self.low.get(partition, -math.inf)

    def restore(self, name: str, ts: float) -> None:
        """A stored mark: ``low/3`` (a watermark) or ``predictions/3`` (read up to)."""
        source, partition = _parts(name)
        if source == "low":
            self.low[partition] = max(ts, self.watermark(partition))
        elif ts > self.read_mark(source, partition):
            self.read_to[source][partition] = ts

    def hear(self, partition: int, marks: dict[str, float | None], idle: set[str]) -> None:
        """A heartbeat read on ``partition``'s repartition partition."""
        heard = self.heard.setdefault(partition, {})
        heard_idle = self.heard_idle.setdefault(partition, set())
        for name, mark in marks.items():
            if mark is not None and mark > heard.get(name, -math.inf):
                heard[name] = mark
            if name in idle:
                heard_idle.add(name)
            else:
                heard_idle.discard(name)

    def advance(self, partitions: Iterable[int]) -> dict[int, float]:
        """Move each join partition's watermark to the lowest event time of its non-idle inputs;
        return the partitions whose watermark moved, with their new one."""
        moved = {}
        for partition in partitions:
            heard = self.heard.get(partition, {})
            heard_idle = self.heard_idle.get(partition, set())
            low = highest = math.inf
            for name, source, number in self.sources:
                if source in self.own and number == partition:
                    mark = self.read_mark(source, number)
                    idle = name in self.idle
                else:
                    mark = heard.get(name, -math.inf)
                    idle = name in heard_idle
                if not idle:
                    low = min(low, mark)
                elif mark > -math.inf:
                    highest = mark if highest == math.inf else max(highest, mark)
            if low == math.inf:  # every input idle: nothing waits anywhere, so up to the furthest read
                low = highest
            if low != math.inf and low > self.watermark(partition):
                self.low[partition] = moved[partition] = low
        return moved

    def beat(self, owned: Iterable[str]) -> tuple[dict[str, float | None], set[str]]:
        """The input partitions read here, how far, and which are idle, for a heartbeat. Only what
        this process read counts: what it forwarded before a crash may not have been sent, and its
        messages are read (and forwarded) again."""
        marks = {name: self.read_now[source].get(number) for name in sorted(owned)
                 for source, number in (_parts(name),)}
        return marks, self.idle & set(marks)

    def refresh_idle(self, offsets: dict[str, int | None], lag: dict[str, int], now: float,
                     idle_timeout_s: float) -> None:
        """Mark idle each input partition read here (``offsets``: its last offset handled) that got
        nothing for ``idle_timeout_s`` with no records waiting (``lag``: a stopped or slow worker is
        not idle). One that gets records again rejoins; what it brings for windows closed meanwhile
        is counted late or expired by its engine, or by the merger (``late_partials``)."""
        self.idle.clear()
        if now - self.refreshed > max(5.0, idle_timeout_s / 4):
            self.activity.clear()  # the process was stopped or starved: it saw nothing of that time
        self.refreshed = now
        for name, offset in offsets.items():
            seen = self.activity.get(name)
            if seen is None or seen[0] != offset or lag.get(name, 0) > 0:
                self.activity[name] = (offset, now)  # moving, or records wait for it
            elif now - seen[1] >= idle_timeout_s:
                self.idle.add(name)

    def idle_partitions(self, partitions: Iterable[int]) -> list[int]:
        """Join partitions whose own inputs are all idle (the merger closes windows without them)."""
        own = sorted(self.own)
        return [p for p in partitions if own and all(f"{s}/{p}" in self.idle for s in own)]


def _parts(name: str) -> tuple[str, int]:
    source, partition = name.split("/")
    return source, int(partition)
