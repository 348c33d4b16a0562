"""Hostile input through the worker's handler (the exact code the faust agent calls): every
message is either processed or dead-lettered with a reason, nothing raises, the counts balance.

MLMON_FUZZ_EXAMPLES raises the number of examples (the default keeps the suite fast)."""

from __future__ import annotations

import os
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.config import Config
from stream.kafka.join_agent import Join

EXAMPLES = int(os.environ.get("MLMON_FUZZ_EXAMPLES", "300"))

scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1),
                    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=40))
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                            st.dictionaries(st.text(max_size=10), inner, max_size=4)),
                           max_leaves=12)
fields = {
    "request_id": st.one_of(st.text(min_size=0, max_size=12), json_values),
    "model": st.one_of(st.sampled_from(["m", "n", ""]), json_values),
    "model_version": st.one_of(st.sampled_from(["v1", "v2"]), json_values),
    "timestamp": st.one_of(st.floats(0, 2e9), st.integers(-5, 10**13), st.sampled_from(
        ["2026-01-01T00:00:00Z", "2026-01-01", "not a date", "9999-12-31T23:59:59+00:00", "0001-01-01T00:00:00Z"]),
        json_values),
    "prediction": st.one_of(st.sampled_from(["a", "b", 1, True, 0.5]), json_values),
    "label": st.one_of(st.sampled_from(["a", "b", 1, False, 2.0]), json_values),
    "scores": st.one_of(st.none(), st.dictionaries(st.sampled_from(["a", "b"]), st.floats(-1, 2)), json_values),
    "segment": st.one_of(st.none(), st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
                         json_values),
}
record = st.fixed_dictionaries({}, optional=fields).map(lambda d: orjson.dumps(d, option=orjson.OPT_NON_STR_KEYS))
raw_bytes = st.one_of(st.binary(max_size=200), st.integers(5000, 5001).map(lambda n: b"[" * n),
                      st.integers(70_000, 70_001).map(lambda n: b'{"a": "' + b"x" * n + b'"}'),
                      st.just(b'{"request_id": "\\ud800"}'), st.just(b'{"timestamp": NaN}'))
message = st.tuples(st.sampled_from(["predictions", "labels"]), st.integers(0, 3), st.one_of(record, raw_bytes))


def finals(join: Join, outputs: list[Any]) -> dict[str, dict[str, Any]]:
    """The last record of every window, by its key, once input ends."""
    for engine in join.engines.values():
        engine.finish()
    records = [orjson.loads(v)["partial"] for t, _, v in outputs + join.outputs() if t == join.config.partials_topic]
    return {f"{r['window']}{r['model']}{r['segment']}": r for r in records}


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(message, min_size=1, max_size=30), st.sampled_from([1.0, 0.5]))
def test_hostile_input_is_processed_or_dead_lettered(messages: list[tuple[str, int, Any]], sample: float) -> None:
    """``sample``: records of the requests it leaves out are counted once, where they arrive."""
    config = Config.from_mapping({"join_ttl_s": 60, "windows": ["tumbling 5m"], "max_models": 2, "sample": sample})
    join = Join(config)
    table: dict[str, Any] = {}
    join.stale = False
    handled = []
    forwarded = 0
    for offset, (topic, partition, raw) in enumerate(messages):
        join.handle(topic, partition, offset, raw)
        for target, _, value in join.forwards:  # on another partition: through the repartition topic
            join.handle(config.repartition_topic, target, forwarded, value)
            forwarded += 1
        join.forwards.clear()
        if offset % 7 == 0:
            handled += join.save(table, partition)
    for partition in list(join.unsaved):
        handled += join.save(table, partition)
    offsets = sorted(o for topic, first, last in handled if topic != config.repartition_topic
                     for o in range(first, last + 1))
    assert offsets == list(range(len(messages)))  # each once, when saved
    outputs = join.outputs()
    rebuilt = Join(config)  # what a restarted worker holds: every window it still has ends alike
    rebuilt.rebuild(table)
    again, live = finals(rebuilt, []), finals(join, outputs)
    assert {k: again[k] for k in again if k in live} == {k: live[k] for k in again if k in live}
    total, pending, _ = join.totals()
    assert total.balance(*pending) == {"predictions": 0, "labels": 0}
    assert total.predictions + total.labels == len(messages)
    dead = [orjson.loads(value) for topic, _, value in outputs if topic == config.dead_letters_topic]
    # Refused on arrival: with where it came from. (A label refused at join time, because its
    # prediction's model needs another type, names the model instead.)
    assert all(d["reason"] and ({"topic", "partition", "offset"} <= set(d) or "model" in d) for d in dead)


def state(join: Join) -> dict[str, Any]:
    """What a join holds between messages, as plain values."""
    queued = {p: (q.records, q.raws, q.origins, q.size) for p, q in join.queued.items()}
    unsaved = {p: (u.offsets, u.predictions, u.labels, u.size) for p, u in join.unsaved.items()}
    dead = [[{**d, "reason": "ahead of the clock"} if "ahead of the worker's clock" in d["reason"] else d
             for d in e.dead_letters] for e in [join.intake, *join.engines.values()]]  # (the clock's time aside)
    return {"queued": queued, "unsaved": unsaved, "forwards": join.forwards[:], "passed": dict(join.passed),
            "offsets": dict(join.offsets), "dead": dead, "read": join.times.read_to, "counts": join.forwarding.counts,
            "where": {p: [orjson.dumps(q.where(i)) for i in range(len(q.records))] for p, q in join.queued.items()}}


valid = st.builds(lambda rid, model, dt, value, score: orjson.dumps(
    {"request_id": f"r{rid}", "model": model, "timestamp": 1_767_225_600 + dt, "prediction": value, "label": value,
     "scores": {"a": score, "b": 1 - score}}), st.integers(0, 20), st.sampled_from(["m", "n"]), st.integers(0, 900),
    st.sampled_from(["a", "b"]), st.sampled_from([0.1, 0.7]))


@pytest.mark.slow
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["predictions", "labels", "repartition"]), st.integers(0, 2),
                          st.lists(st.one_of(valid, valid, valid, record, raw_bytes), min_size=1, max_size=12)),
                min_size=1, max_size=6),
       st.booleans(), st.sampled_from([1.0, 0.5]))
def test_messages_handled_many_at_once_as_one_at_a_time(runs: list[tuple[str, int, list[Any]]],
                                                        labels_elsewhere: bool, sample: float) -> None:
    """``Join.handle_many`` of consecutive messages leaves what ``handle`` of each in turn leaves:
    queued records and where they came from, offsets to commit, forwards, dead letters, event time;
    whether the input is co-partitioned or not (labels on another partition count)."""
    config = Config.from_mapping({"partitions": 3, "join_ttl_s": 60, "windows": ["tumbling 5m"], "max_models": 2,
                                  "sample": sample})
    inputs = {"predictions": 3, "labels": 4 if labels_elsewhere else 3}
    joins = [Join(config, inputs), Join(config, inputs)]
    topics = {"predictions": config.predictions_topic, "labels": config.labels_topic,
              "repartition": config.repartition_topic}
    next_offset: dict[tuple[str, int], int] = {}
    for source, partition, raws in runs:
        topic = topics[source]
        if source == "repartition":  # forwarded as a worker forwards: a kind byte, then the record
            raws = [(b"p" if i % 2 else b"l") + raw if i % 3 else raw for i, raw in enumerate(raws)]
        first = next_offset.get((topic, partition), 0)
        next_offset[(topic, partition)] = first + len(raws)
        for offset, raw in enumerate(raws, first):
            joins[0].handle(topic, partition, offset, raw)
        joins[1].handle_many(topic, partition, first, raws)
        assert state(joins[1]) == state(joins[0])
    for join in joins:
        join.settle()
    assert state(joins[1]) == state(joins[0])
    assert joins[1].totals()[:2] == joins[0].totals()[:2]
    outputs = [[(t, k, v) for t, k, v in join.outputs() if b"worker's clock" not in v] for join in joins]
    assert outputs[1] == outputs[0]
