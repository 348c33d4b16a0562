"""The merge agent's handlers: partials are merged once per heartbeat, windows close on watermarks."""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson

from stream.config import Config
from stream.kafka.join_agent import Join
from stream.kafka.merge_agent import Merge

START = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def partials_of(config: Config, partition: int, pairs: int) -> list[dict[str, Any]]:
    """Real partials: one engine fed ``pairs`` right answers (as input partition ``partition``'s)."""
    join = Join(dataclasses.replace(config, partitions=1))  # every request on the one partition
    join.stale = False
    for i in range(pairs):
        rid = f"{partition}-{i}"
        join.handle(config.predictions_topic, 0, 2 * i, orjson.dumps(
            {"request_id": rid, "model": "m", "timestamp": START + i, "prediction": "a"}))
        join.handle(config.labels_topic, 0, 2 * i + 1, orjson.dumps(
            {"request_id": rid, "timestamp": START + i, "label": "a"}))
    join.settle()  # the engine takes the queued records
    join.engines[0].flush()
    return [orjson.loads(v)["partial"] for t, _, v in join.outputs() if t == config.partials_topic]


def route(merge: Merge, table: dict[str, Any]) -> list[Any]:
    """Deliver what merger partitions say to each other (asks, answers: see kafka.registry), as
    the partials topic would; the outputs that come of it."""
    out = []
    while directed := merge.registry.take_directed():
        for offset, (partition, body) in enumerate(directed):
            out += merge.handle(table, partition, offset, body)
    return out


def test_partials_become_one_record_per_window_at_the_heartbeat_and_close_on_watermarks() -> None:
    config = Config.from_mapping({"partitions": 2, "windows": ["tumbling 5m"], "join_ttl_s": 60})
    merge = Merge(config)
    table: dict[str, Any] = {}
    merge.stale = False
    for partition, pairs in ((0, 3), (1, 4)):
        for partial in partials_of(config, partition, pairs):
            merge.on_partial(table, 0, partition, partial)
    assert merge.on_heartbeat(table, 0, {0: START + 5, 1: None}) == []  # held: model m is not admitted yet
    first = route(merge, table)  # admitted: its held windows go out at once
    assert [orjson.loads(v)["n"] for t, _, v in first if t == config.metrics_topic] == [7]
    assert merge.on_heartbeat(table, 1, {0: None}) == []  # another merger partition: nothing of its own
    assert merge.on_heartbeat(table, 0, {0: START + 10, 1: None}) == []  # nothing changed since
    for partial in partials_of(config, 1, 4):  # the same partials again: a new revision at the heartbeat
        merge.on_partial(table, 0, 1, partial)
    again = merge.on_heartbeat(table, 0, {0: START + 20, 1: START + 20})
    assert [orjson.loads(v)["n"] for t, _, v in again if t == config.metrics_topic] == [7]
    assert merge.on_heartbeat(table, 0, {0: START + 30, 1: START + 30}) == []  # nothing changed since

    closing = START + 300 + 60 + 60  # window end + join TTL + sweep slack
    last = [orjson.loads(v) for t, _, v in merge.on_heartbeat(table, 0, {0: closing, 1: closing})
            if t == config.metrics_topic]
    assert [(r["n"], r["final"], r["metrics"]["accuracy"]) for r in last] == [(7, True, 1.0)]
    for partial in partials_of(config, 0, 3):  # a replayed partial cannot reopen a final window
        merge.on_partial(table, 0, 0, partial)
    assert merge.on_heartbeat(table, 0, {0: closing + 1, 1: closing + 1}) == []


def test_a_held_window_the_watermarks_passed_closes_at_the_heartbeat_after_its_model_is_admitted() -> None:
    config = Config.from_mapping({"partitions": 1, "windows": ["tumbling 5m", "tumbling 1h"], "join_ttl_s": 60})
    merge, table = Merge(config), {}
    merge.stale = False
    for partial in partials_of(config, 0, 3):
        merge.on_partial(table, 0, 0, partial)
    passed = START + 300 + 60 + 60  # the 5-minute window's end + join TTL + sweep slack; the hour's is open
    assert merge.on_heartbeat(table, 0, {0: passed}) == []  # held: model m is not admitted yet
    admitted = [orjson.loads(v) for t, _, v in route(merge, table) if t == config.metrics_topic]
    assert [(r["window"]["name"], r["final"]) for r in admitted] == [("tumbling_1h", False)]
    closed = [orjson.loads(v) for t, _, v in merge.on_heartbeat(table, 0, {0: passed + 1}) if t == config.metrics_topic]
    assert [(r["window"]["name"], r["n"], r["final"]) for r in closed] == [("tumbling_5m", 3, True)]


def test_a_message_the_merge_agent_cannot_handle_is_dead_lettered_with_where_it_came_from() -> None:
    config = Config.from_mapping({"partitions": 2, "windows": ["tumbling 5m"], "join_ttl_s": 60})
    merge = Merge(config)
    merge.stale = False
    table: dict[str, Any] = {}
    [(topic, key, value)] = merge.handle(table, 1, 42, b'{"watermarks": {"zero": 5}}')
    dead = orjson.loads(value)
    assert topic == config.dead_letters_topic and key is None
    where = (dead["source"], dead["topic"], dead["partition"], dead["offset"])
    assert where == ("partials", config.partials_topic, 1, 42)
    assert "merge agent failed" in dead["reason"] and dead["raw"] == '{"watermarks": {"zero": 5}}'
    partial = partials_of(config, 0, 2)[0]
    assert merge.handle(table, 0, 43, orjson.dumps({"partition": 0, "partial": partial})) == []
    assert table  # stored


def records_of(config: Config, out: list[Any]) -> list[dict[str, Any]]:
    return [orjson.loads(v) for t, _, v in out if t == config.metrics_topic]


def partials_over(config: Config, partition: int, pairs: int, step_s: float) -> list[dict[str, Any]]:
    """An engine's partials for ``pairs`` pairs ``step_s`` apart (two right answers in three)."""
    join = Join(dataclasses.replace(config, partitions=1))
    join.stale = False
    for i in range(pairs):
        rid, ts = f"{partition}-{i}", START + i * step_s
        join.handle(config.predictions_topic, 0, 2 * i, orjson.dumps(
            {"request_id": rid, "model": "m", "timestamp": ts, "prediction": "a"}))
        join.handle(config.labels_topic, 0, 2 * i + 1, orjson.dumps(
            {"request_id": rid, "timestamp": ts, "label": "a" if i % 3 else "b"}))
    join.settle()  # the engine takes the queued records
    join.engines[0].flush()
    return [orjson.loads(v)["partial"] for t, _, v in join.outputs() if t == config.partials_topic]


def test_a_cumulative_window_is_its_closed_base_windows_plus_the_open_ones_and_survives_a_restart() -> None:
    for windows, published in ((["tumbling 5m", "cumulative"], {"tumbling_5m", "cumulative"}),
                               (["cumulative"], {"cumulative"})):  # a hidden tumbling 1h base
        config = Config.from_mapping({"partitions": 2, "windows": windows, "join_ttl_s": 60})
        merge, table = Merge(config), {}
        merge.stale = False
        for partition, pairs in ((0, 30), (1, 45)):  # 30 s apart: 15 and 22.5 minutes of pairs
            for partial in partials_over(config, partition, pairs, 30.0):
                merge.on_partial(table, 0, partition, partial)
        first = records_of(config, route(merge, table))  # model admitted: its windows at once
        assert {r["window"]["name"] for r in first} == published
        [total] = [r for r in first if r["window"]["name"] == "cumulative"]
        assert (total["n"], total["confusion_matrix"]) == (75, [[50, 0], [25, 0]])  # rows: actual a, b
        assert not total["final"] and total["predictions"] == 75
        merge.on_heartbeat(table, 0, {0: START + 600, 1: START + 600})
        later = START + 7 * 86400  # every base window final: folded into the stored base
        closing = records_of(config, merge.on_heartbeat(table, 0, {0: later, 1: later}))
        [again] = [r for r in closing if r["window"]["name"] == "cumulative"]
        assert (again["n"], again["confusion_matrix"]) == (75, [[50, 0], [25, 0]])
        assert all(r["final"] for r in closing if r["window"]["name"] != "cumulative")
        restarted = Merge(config)
        restarted.rebuild(table)
        for partial in partials_over(config, 0, 30, 30.0):  # replayed partials of closed windows: ignored
            restarted.on_partial(table, 0, 0, partial)
        assert records_of(config, restarted.on_heartbeat(table, 0, {0: later + 1, 1: later + 1})) == []


def test_windows_close_without_the_idle_input_partitions() -> None:
    config = Config.from_mapping({"partitions": 2, "windows": ["tumbling 5m"], "join_ttl_s": 60})
    merge, table = Merge(config), {}
    merge.stale = False
    for partial in partials_of(config, 0, 3):
        merge.on_partial(table, 0, 0, partial)
    assert [r["final"] for r in records_of(config, route(merge, table))] == [False]  # admitted: at once
    closing = START + 300 + 60 + 60
    assert merge.on_heartbeat(table, 0, {0: closing, 1: None}) == []  # input partition 1 not heard from
    closed = records_of(config, merge.on_heartbeat(table, 0, {0: closing, 1: None}, idle={1}))
    assert [(r["n"], r["final"]) for r in closed] == [(3, True)]
    for partial in partials_of(config, 1, 2):  # partition 1 wakes up with pairs for the closed window
        merge.on_partial(table, 0, 1, partial)
    assert merge.late_partials == 1
