"""The join agent's handlers: records forwarded to their request's partition, event time and idleness,
records stamped too far ahead of the wall clock refused, rolling windows across a rebuild."""

from __future__ import annotations

import math
import time
from typing import Any

import orjson
import pytest

from one_worker import OneWorker
from stream.config import Config
from stream.core.engine import Engine
from stream.kafka.formats import Heartbeat, decode
from stream.kafka.join_agent import Join
from stream.kafka.routing import partition_of


def test_a_record_stamped_past_the_wall_clock_and_max_future_is_dead_lettered_and_moves_no_watermark() -> None:
    config = Config.from_mapping({"partitions": 1, "windows": ["tumbling 5m"], "max_future": "1h"})
    join = Join(config)
    join.stale = False
    now = time.time()
    for offset, ts in enumerate((now - 60, now + 1800, now + 7200)):  # the last is over an hour ahead
        join.handle(config.predictions_topic, 0, offset, orjson.dumps(
            {"request_id": f"r{offset}", "model": "m", "timestamp": ts, "prediction": "a"}))
    join.handle(config.labels_topic, 0, 0, orjson.dumps({"request_id": "r0", "timestamp": now + 86400, "label": "a"}))
    engine = join.engines[0]
    dead = engine.dead_letters
    where = [(d["source"], d["offset"], d["request_id"]) for d in dead]
    assert where == [("predictions", 2, "r2"), ("labels", 0, "r0")]
    assert all("ahead of the worker's clock" in d["reason"] for d in dead)
    assert join.times.read_to == {"predictions": {0: now + 1800}, "labels": {}}  # the refused moved nothing
    assert engine.health.invalid_predictions == 1 and engine.health.invalid_labels == 1
    assert engine.balance() == {"predictions": 0, "labels": 0}


def test_no_limit_when_max_future_is_zero() -> None:
    config = Config.from_mapping({"partitions": 1, "windows": ["tumbling 5m"], "max_future": 0})
    join = Join(config)
    join.stale = False
    join.handle(config.predictions_topic, 0, 0, orjson.dumps(
        {"request_id": "r", "model": "m", "timestamp": time.time() + 10 * 86400, "prediction": "a"}))
    join.settle()
    assert join.engines[0].dead_letters == [] and join.engines[0].health.predictions == 1


def on_partition(partition: int, partitions: int, n: int) -> list[str]:
    """``n`` request ids whose partition (murmur2) is ``partition``."""
    ids = (f"r{i}" for i in range(10 * n * partitions))
    return [rid for rid in ids if partition_of(rid, partitions) == partition][:n]


def test_an_input_that_stops_stops_holding_event_time_back_and_a_silent_partition_is_idle() -> None:
    config = Config.from_mapping({"partitions": 2, "windows": ["tumbling 5m"], "idle_timeout": "60s"})
    join = Join(config)
    join.stale = False
    worker = OneWorker(join)
    start = 1_767_225_600.0
    ids = on_partition(0, 2, 12)
    for i in range(10):  # predictions go on; the labels stop after the first
        worker.send(config.predictions_topic, 0, {"request_id": ids[i], "model": "m", "timestamp": start + 60 * i,
                                                  "prediction": "a"})
    worker.send(config.labels_topic, 0, {"request_id": ids[0], "timestamp": start, "label": "a"})
    for now in range(1000, 1060):  # once a second, as the worker does
        worker.flush(float(now))
    assert join.times.idle == set()
    assert join.watermark(0) == join.watermark(1) == -math.inf  # partition 1's inputs: no records, not idle yet
    worker.send(config.predictions_topic, 0, {"request_id": ids[10], "model": "m", "timestamp": start + 600,
                                              "prediction": "a"})
    worker.flush(1060.0)  # labels/0 idle, and every input of partition 1
    assert join.times.idle == {"labels/0", "predictions/1", "labels/1"}
    worker.flush(1061.0)  # the heartbeats saying so were read on both partitions
    assert join.watermark(0) == join.watermark(1) == start + 600  # predictions/0 alone sets event time
    assert join.engines[0].watermark == start + 600
    beat = decode(join.heartbeat([0, 1]) or b"{}")
    assert beat == Heartbeat(watermarks={"0": start + 600, "1": start + 600}, idle=[1])
    worker.send(config.labels_topic, 0, {"request_id": ids[9], "timestamp": start + 540, "label": "a"})
    worker.flush(1062.0)  # the labels are back
    assert join.times.idle == {"predictions/1", "labels/1"}
    assert join.watermark(0) == start + 600  # never backwards


def test_a_record_on_another_partition_is_forwarded_to_its_own_and_counted_there() -> None:
    config = Config.from_mapping({"partitions": 2, "windows": ["tumbling 5m"], "idle_timeout": "60s"})
    join = Join(config)
    join.stale = False
    start = 1_767_225_600.0
    [rid] = on_partition(1, 2, 1)
    prediction = orjson.dumps({"request_id": rid, "model": "m", "timestamp": start, "prediction": "a"})
    join.handle(config.predictions_topic, 0, 7, prediction)
    assert join.forwards == [(1, rid.encode(), b"p" + prediction)]
    assert join.forwarding.counts == {"predictions": 1, "labels": 0}
    assert join.unsaved[0].offsets == [[config.predictions_topic, 7, 7]]  # handled with partition 0's batch
    join.handle(config.repartition_topic, 1, 0, join.forwards.pop()[2])
    join.handle(config.labels_topic, 1, 0, orjson.dumps({"request_id": rid, "timestamp": start, "label": "a"}))
    join.settle()
    assert join.engines[1].health.pairs == 1 and join.forwards == []
    table: dict[str, Any] = {}
    join.save(table, 1)
    rebuilt = Join(config)
    rebuilt.rebuild(table)  # the forwarded prediction is stored with partition 1's batch
    assert rebuilt.engines[1].health.pairs == 1


def test_an_input_with_another_partition_count_is_forwarded_whole_and_handled_once_sent() -> None:
    config = Config.from_mapping({"partitions": 2, "windows": ["tumbling 5m"]})
    join = Join(config, {"predictions": 2, "labels": 3})
    join.stale = False
    start = 1_767_225_600.0
    [rid] = on_partition(0, 2, 1)
    for offset in (4, 5):
        join.handle(config.labels_topic, 0, offset, orjson.dumps({"request_id": rid, "timestamp": start, "label": 1}))
    join.handle(config.labels_topic, 0, 6, b"{not json")
    assert [f[0] for f in join.forwards] == [0, 0] and 0 not in join.unsaved
    assert join.passed == {(config.labels_topic, 0): [4, 6]}
    assert join.intake.health.invalid_labels == 1
    assert [t for t, _, _ in join.outputs()] == [config.dead_letters_topic]


def test_an_input_with_records_waiting_is_not_idle_however_long_it_has_not_moved() -> None:
    config = Config.from_mapping({"partitions": 1, "windows": ["tumbling 5m"], "idle_timeout": "60s"})
    join = Join(config)
    join.stale = False
    inputs = [(config.predictions_topic, 0), (config.labels_topic, 0)]
    join.lag = {(config.predictions_topic, 0): 5000, (config.labels_topic, 0): 3}  # a paused worker's backlog
    for now in range(600):
        join.advance(inputs, [0], now=float(now))
    assert join.times.idle == set()
    join.lag = {}
    for now in range(600, 661):
        join.advance(inputs, [0], now=float(now))
    assert join.times.idle == {"predictions/0", "labels/0"} and join.times.idle_partitions([0]) == [0]
    join.advance(inputs, [0], now=2000.0)  # a stopped process saw nothing of the time between
    assert join.times.idle == set()


def test_rolling_windows_survive_a_rebuild_after_their_batches_were_pruned() -> None:
    config = Config.from_mapping({"partitions": 1, "windows": ["tumbling 5m", "rolling 50"], "join_ttl": "60s"})
    join, table = Join(config), {}
    join.stale = False
    start = 1_767_225_600.0
    for i in range(80):
        join.handle(config.predictions_topic, 0, i, orjson.dumps(
            {"request_id": f"r{i}", "model": "m", "timestamp": start + i, "prediction": "a" if i % 3 else "b"}))
        join.handle(config.labels_topic, 0, i, orjson.dumps(
            {"request_id": f"r{i}", "timestamp": start + i, "label": "a"}))
    join.save(table, 0)
    inputs = [(config.predictions_topic, 0), (config.labels_topic, 0)]
    later = start + 86400  # every window of those pairs final: their batch can go
    join.handle(config.predictions_topic, 0, 80, orjson.dumps(
        {"request_id": "tick", "model": "t", "timestamp": later, "prediction": "x"}))
    join.handle(config.labels_topic, 0, 80, orjson.dumps({"request_id": "tick", "timestamp": later, "label": "x"}))
    join.advance(inputs, [0], now=0.0)
    join.save(table, 0)

    def rolling_pairs(join: Join) -> list[Any]:
        engine = join.engines[0]
        return sorted(p for s in engine._series.values() if s.model == "m" and not s.segment for r in s.rolling
                      for p in r.export_pairs())

    before = rolling_pairs(join)
    assert len(before) == 50 and before[0][1] == "r30"  # the last 50 completed
    assert join.prune(table, 0) == 1  # the batch of the 80 pairs
    rebuilt = Join(config)
    rebuilt.rebuild(table)
    assert rolling_pairs(rebuilt) == before


def test_a_record_whose_handling_fails_is_dead_lettered_and_the_others_are_taken_and_saved(
        monkeypatch: pytest.MonkeyPatch) -> None:
    config = Config.from_mapping({"partitions": 1, "windows": ["tumbling 5m"]})
    join = Join(config)
    join.stale = False
    start = 1_767_225_600.0
    real = Engine.prediction

    def prediction(self: Engine, record: Any, **where: Any) -> bool:
        if record.request_id == "bad":
            raise RuntimeError("a bug")
        return real(self, record, **where)

    monkeypatch.setattr(Engine, "prediction", prediction)
    for offset, rid in enumerate(["a", "bad", "c"]):  # the first and the bad one go the per-record way
        join.handle(config.predictions_topic, 0, offset, orjson.dumps(
            {"request_id": rid, "model": "m" if rid != "bad" else "other", "timestamp": start, "prediction": "x"}))
    table: dict[str, Any] = {}
    assert join.save(table, 0) == [[config.predictions_topic, 0, 2]]
    (dead,) = join.engines[0].dead_letters
    assert dead["reason"] == "internal error (see worker log)" and dead["offset"] == 1 and "raw" in dead
    rebuilt = Join(config)
    rebuilt.rebuild(table)
    assert rebuilt.engines[0].pending() == (2, 0)  # a and c were stored

    def broken(self: Engine, *args: Any, **kwargs: Any) -> list[bool]:
        raise RuntimeError("a bug in the batch path")

    monkeypatch.setattr(Engine, "take_many", broken)
    join.handle(config.predictions_topic, 0, 3, orjson.dumps(
        {"request_id": "d", "model": "m", "timestamp": start, "prediction": "x"}))
    join.settle()
    assert [d["offset"] for d in join.engines[0].dead_letters] == [1, 3]
