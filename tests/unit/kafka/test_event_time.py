"""Event time across join partitions: what holds a partition's watermark back, and when a read
mark counts directly rather than through heartbeats."""

from __future__ import annotations

import math

from stream.kafka.event_time import EventTimes

SOURCES = ["predictions/0", "labels/0", "predictions/1", "labels/1"]


def times_reading_everything() -> EventTimes:
    times = EventTimes(SOURCES, own={"predictions", "labels"})
    for name, ts in (("predictions/0", 100.0), ("labels/0", 90.0), ("predictions/1", 80.0), ("labels/1", 120.0)):
        source, partition = name.split("/")
        times.read(source, int(partition), ts)
    return times


def test_another_partition_s_inputs_count_through_heartbeats_heard_on_this_partition() -> None:
    times = times_reading_everything()
    assert times.advance([0], owned=SOURCES) == {}  # nothing heard of partition 1's inputs yet
    times.hear(1, {"predictions/1": 80.0, "labels/1": 120.0}, idle=set())  # heard on the other partition
    assert times.advance([0], owned=SOURCES) == {}
    times.hear(0, {"predictions/1": 80.0, "labels/1": 120.0}, idle=set())
    assert times.advance([0], owned=SOURCES) == {0: 80.0}


def test_inputs_read_here_count_directly_once_nothing_forwarded_can_be_on_its_way() -> None:
    times = times_reading_everything()
    times.caught_up = {0}  # partition 0 has read its repartition partition to the end
    assert times.advance([0, 1], owned=SOURCES) == {0: 80.0}  # partition 1 has not: it waits for heartbeats
    times.forwarded.add("predictions/1")  # from now on its records may be on their way to partition 0
    times.read("predictions", 1, 200.0)
    times.read("labels", 0, 300.0)
    times.read("predictions", 0, 300.0)
    assert times.advance([0], owned=SOURCES) == {}  # held at what heartbeats say of predictions/1 (nothing)
    times.hear(0, {"predictions/1": 150.0}, idle=set())
    assert times.advance([0], owned=SOURCES) == {0: 120.0}  # labels/1, read here, direct
    assert times.watermark(1) == -math.inf
