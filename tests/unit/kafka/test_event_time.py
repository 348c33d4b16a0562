"""Event time in the worker (``kafka.event_time``): each join partition's watermark is the lowest
event time among its inputs that are not idle (its own partitions as read here, the others as
heartbeats say), the furthest read when all are idle, and never moves back; against a model of
that rule on random reads and heartbeats."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from stream.kafka.event_time import EventTimes

PARTITIONS = 3
SOURCES = [f"{source}/{p}" for source in ("predictions", "labels") for p in range(PARTITIONS)]
stamps = st.floats(0, 1000)
operations = st.lists(st.one_of(
    st.tuples(st.just("read"), st.sampled_from(["predictions", "labels"]), st.integers(0, PARTITIONS - 1), stamps),
    st.tuples(st.just("hear"), st.integers(0, PARTITIONS - 1),
              st.dictionaries(st.sampled_from(SOURCES), st.none() | stamps, max_size=4),
              st.sets(st.sampled_from(SOURCES), max_size=2)),
    st.tuples(st.just("advance")),
), max_size=60)


def expected_low(partition: int, read: dict[str, float], heard: dict[int, dict[str, float]],
                 heard_idle: dict[int, set[str]]) -> float:
    """The rule: lowest of the non-idle inputs; all idle, the furthest read; none, +inf (no move)."""
    marks, idle_marks = [], []
    for name in SOURCES:
        number = name.split("/")[1]
        if int(number) == partition:  # its own input partitions: as read here (never idle here)
            marks.append(read.get(name, -math.inf))
        elif name in heard_idle.get(partition, set()):
            idle_marks.append(heard.get(partition, {}).get(name, -math.inf))
        else:
            marks.append(heard.get(partition, {}).get(name, -math.inf))
    if marks:
        return min(marks)
    finite = [m for m in idle_marks if m > -math.inf]
    return max(finite) if finite else math.inf


@settings(max_examples=300, deadline=None)
@given(operations)
def test_watermarks_follow_the_rule_and_never_move_back(steps: list[tuple[Any, ...]]) -> None:
    times = EventTimes(SOURCES, own={"predictions", "labels"})
    read: dict[str, float] = {}
    heard: dict[int, dict[str, float]] = {}
    heard_idle: dict[int, set[str]] = {}
    watermarks = {p: -math.inf for p in range(PARTITIONS)}
    for step in steps:
        if step[0] == "read":
            _, source, partition, ts = step
            times.read(source, partition, ts)
            name = f"{source}/{partition}"
            read[name] = max(read.get(name, -math.inf), ts)
        elif step[0] == "hear":
            _, partition, marks, idle = step
            idle = idle & set(marks)
            times.hear(partition, marks, idle)
            for name, mark in marks.items():
                if mark is not None:
                    heard.setdefault(partition, {})[name] = max(heard.get(partition, {}).get(name, -math.inf), mark)
                if name in idle:
                    heard_idle.setdefault(partition, set()).add(name)
                else:
                    heard_idle.setdefault(partition, set()).discard(name)
        else:
            moved = times.advance(range(PARTITIONS))
            for p in range(PARTITIONS):
                low = expected_low(p, read, heard, heard_idle)
                before = watermarks[p]
                if low != math.inf and low > before:
                    watermarks[p] = low
                assert times.watermark(p) == watermarks[p], (p, step)
                assert (p in moved) == (watermarks[p] != before)
