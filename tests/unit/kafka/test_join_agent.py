"""The join agent's handlers: records stamped too far ahead of the wall clock are refused."""

from __future__ import annotations

import time
from typing import Any

import orjson

from stream.config import Config
from stream.kafka.join_agent import Join


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
    assert join.marks[0][0] == now + 1800 and join.marks[0][1] == -float("inf")  # the refused moved nothing
    assert engine.health.invalid_predictions == 1 and engine.health.invalid_labels == 1
    assert engine.balance() == {"predictions": 0, "labels": 0}


def test_no_limit_when_max_future_is_zero() -> None:
    config = Config.from_mapping({"partitions": 1, "windows": ["tumbling 5m"], "max_future": 0})
    join = Join(config)
    join.stale = False
    join.handle(config.predictions_topic, 0, 0, orjson.dumps(
        {"request_id": "r", "model": "m", "timestamp": time.time() + 10 * 86400, "prediction": "a"}))
    assert join.engines[0].dead_letters == [] and join.engines[0].health.predictions == 1


def test_an_input_that_stops_stops_holding_its_partition_back_and_a_silent_partition_is_idle() -> None:
    config = Config.from_mapping({"partitions": 2, "windows": ["tumbling 5m"], "idle_timeout": "60s"})
    join = Join(config)
    join.stale = False
    start = 1_767_225_600.0
    for i in range(10):  # predictions go on; the labels stop after the first
        join.handle(config.predictions_topic, 0, i, orjson.dumps(
            {"request_id": f"r{i}", "model": "m", "timestamp": start + 60 * i, "prediction": "a"}))
    join.handle(config.labels_topic, 0, 0, orjson.dumps({"request_id": "r0", "timestamp": start, "label": "a"}))
    for now in range(1000, 1060):  # once a second, as the worker does
        join.refresh_idle([0, 1], now=float(now))
    assert join.watermark(0) == start and join.idle == set()
    assert join.watermark(0) == start
    join.handle(config.predictions_topic, 0, 10, orjson.dumps(
        {"request_id": "r10", "model": "m", "timestamp": start + 600, "prediction": "a"}))
    join.refresh_idle([0, 1], now=1060.0)  # labels idle: predictions alone set event time
    assert join.watermark(0) == start + 600 and join.engines[0].watermark == start + 600
    assert join.idle == {1}  # nothing at all on partition 1
    beat = orjson.loads(join.heartbeat([0, 1]) or b"{}")
    assert beat == {"watermarks": {"0": start + 600, "1": None}, "idle": [1]}
    join.handle(config.labels_topic, 0, 1, orjson.dumps({"request_id": "r9", "timestamp": start + 540, "label": "a"}))
    join.refresh_idle([0, 1], now=1061.0)  # the labels are back
    assert join.watermark(0) == start + 600  # never backwards


def test_an_input_with_records_waiting_is_not_idle_however_long_it_has_not_moved() -> None:
    config = Config.from_mapping({"partitions": 1, "windows": ["tumbling 5m"], "idle_timeout": "60s"})
    join = Join(config)
    join.stale = False
    join.lag = {(config.predictions_topic, 0): 5000, (config.labels_topic, 0): 3}  # a paused worker's backlog
    for now in range(600):
        join.refresh_idle([0], now=float(now))
    assert join.idle == set()
    join.lag = {}
    for now in range(600, 661):
        join.refresh_idle([0], now=float(now))
    assert join.idle == {0}
    join.refresh_idle([0], now=2000.0)  # a stopped process saw nothing of the time between
    assert join.idle == set()


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
    later = start + 86400  # every window of those pairs final: their batch can go
    join.handle(config.predictions_topic, 0, 80, orjson.dumps(
        {"request_id": "tick", "model": "t", "timestamp": later, "prediction": "x"}))
    join.handle(config.labels_topic, 0, 80, orjson.dumps({"request_id": "tick", "timestamp": later, "label": "x"}))
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
