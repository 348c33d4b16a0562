"""Requests that their own records settle, counted at once (``Engine.take_settled``), with the
others fed in time order between the settled ones' ticks, give what feeding every record gives:
the same final partials, sweeps, health counts, dead letters and end of event time."""

from __future__ import annotations

import dataclasses
import json
import random
from operator import itemgetter
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.config import Config
from stream.core.columns import LabelColumns, PredictionColumns
from stream.core.engine import Engine
from stream.core.records import Label, Prediction
from stream.core.settled import _requests
from stream.replay.bulk import interleaved
from tests.unit.core.test_ingest import parsed, records

label = st.fixed_dictionaries({"delay": st.sampled_from([-301, -250, -160, -100, -61, -30, -1, 0, 1, 59, 60, 61, 99,
                                                          100, 101, 139, 140, 141, 200, 260, 301, 500]),
                               "value": st.sampled_from(["a", "b", "c", "a", "b", 1, True])})
request = st.fixed_dictionaries({
    "ts": st.integers(0, 900),
    "models": st.sampled_from([("m",), ("m",), ("n",), ("k",), ("r",), ("m", "n"), ()]),  # (): labels alone
    "pred": st.sampled_from(["a", "b", "c"]),
    "score": st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.9, 1.0]),
    "segment": st.sampled_from(["x", "y", None]),
    "version": st.sampled_from(["v1", "v1", "v2"]),
    "labels": st.one_of(st.lists(label, min_size=1, max_size=1), st.lists(label, max_size=2)),
    "again": st.lists(st.integers(-40, 40), max_size=1),
})
setting = st.fixed_dictionaries({
    "join_ttl_s": st.sampled_from([60, 100]),
    "watermark_lag_s": st.sampled_from([1, 20, 100_000]),
    "emit_interval_s": st.sampled_from([10, 60, 90]),
    "duplicate_labels": st.sampled_from(["earliest", "latest"]),
    "windows": st.sampled_from([["tumbling 50s", "cumulative"], [{"kind": "hopping", "size": "100s", "hop": "50s"}],
                                ["tumbling 1h", "tumbling 1d", "cumulative"]]),
    "max_classes": st.sampled_from([2, 100]),
    "max_versions_per_model": st.sampled_from([1, 10]),
})

Event = tuple[float, int, int, Prediction | Label]


def events_of(requests: list[dict[str, Any]]) -> list[Event]:
    """Records as replay orders them: by time, predictions first, then as they came."""
    out = [(r.timestamp, 0 if type(r) is Prediction else 1, i, r) for i, r in enumerate(parsed(records(requests)))]
    return sorted(out, key=itemgetter(0, 1, 2))


def outcome(engine: Engine) -> dict[str, Any]:
    health = dataclasses.asdict(engine.health)
    return {"partials": sorted(json.dumps(r, sort_keys=True) for r in engine.metric_records),
            "dead": sorted(json.dumps(d, sort_keys=True) for d in engine.dead_letters), "sweeps": engine.sweeps,
            "health": health, "clock": engine.clock(),
            "pending": engine.pending()}


def engine_for(config: Config) -> Engine:
    engine = Engine(config, revisions=False, emit_partials=True)
    engine.sweeps = []
    return engine


def every_record(config: Config, events: list[Event]) -> dict[str, Any]:
    engine = engine_for(config)
    engine.receive_many([e[3] for e in events])
    engine.finish()
    return outcome(engine)


def columns_of(events: list[Event]) -> tuple[PredictionColumns, LabelColumns]:
    predictions, labels = PredictionColumns(), LabelColumns()
    for kind, found in enumerate((predictions, labels)):
        chosen = [e for e in events if e[1] == kind]
        found.add([e[2] for e in chosen], [e[3] for e in chosen])  # type: ignore[arg-type]
    return predictions, labels


def settled_first(config: Config, events: list[Event], batch: int) -> tuple[dict[str, Any], int]:
    engine = engine_for(config)
    columns = columns_of(events)
    taken = engine.take_settled(*columns)
    rest = sorted(((found.timestamps[i], kind, found.rows[i], found.record(i))
                   for kind, (found, mask) in enumerate(zip(columns, taken, strict=True))
                   for i in np.flatnonzero(~mask).tolist()), key=itemgetter(0, 1, 2))
    ticks = engine.ticks(np.concatenate([found.timestamps[mask] for found, mask in zip(columns, taken, strict=True)]))
    for item in interleaved(rest, ticks, batch):  # type: ignore[arg-type]
        if type(item) is float:
            engine.observe(item)
        else:
            engine.receive_many([e[3] for e in item])  # type: ignore[union-attr]
    engine.finish()
    return outcome(engine), int(sum(mask.sum() for mask in taken))


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests=st.lists(request, min_size=1, max_size=80), options=setting, batch=st.sampled_from([1, 3, 4096]))
def test_settled_requests_counted_at_once_give_what_every_record_fed_gives(
        requests: list[dict[str, Any]], options: dict[str, Any], batch: int) -> None:
    config = Config.from_mapping({**options, "regression_models": ["r"]})
    events = events_of(requests)
    settled, _ = settled_first(config, events, batch)
    assert settled == every_record(config, events)


@pytest.mark.parametrize("seed", range(12))
def test_settled_requests_of_dense_streams_give_what_every_record_fed_gives(seed: int) -> None:
    """Hundreds of requests, most of them settled, under each setting in turn."""
    rng = random.Random(seed)
    options = {name: rng.choice(values) for name, values in (
        ("join_ttl_s", [60, 100]), ("watermark_lag_s", [1, 20, 100_000]), ("emit_interval_s", [10, 60, 90]),
        ("duplicate_labels", ["earliest", "latest"]))}
    ttl = options["join_ttl_s"]

    def delay() -> int:  # within the TTL mostly, else up to twice as early or three times as late
        return rng.randint(-ttl, ttl) if rng.random() < 0.7 else rng.randint(-2 * ttl, 3 * ttl)

    requests = [{"ts": rng.randint(0, 900), "models": rng.choice([("m",)] * 6 + [("k",), ("r",), ("m", "n"), ()]),
                 "pred": rng.choice("abc"), "score": rng.random(), "segment": rng.choice(["x", "y", None]),
                 "version": "v1", "labels": [{"delay": delay(), "value": rng.choice(["a", "b", "a", "b", 3, 2.5])}
                                             for _ in range(rng.choice([0, 1, 1, 1, 1, 2]))],
                 "again": [rng.randint(-40, 40)] if rng.random() < 0.05 else []} for _ in range(300)]
    config = Config.from_mapping({**options, "regression_models": ["r"]})
    events = events_of(requests)
    settled, taken = settled_first(config, events, rng.choice([1, 7, 4096]))
    assert taken > len(events) / 4 and settled == every_record(config, events)


def test_most_requests_of_a_plain_backtest_are_settled() -> None:
    requests = [{"ts": i, "models": ("m",), "pred": "ab"[i % 2], "score": 0.5, "segment": "x", "version": "v1",
                 "labels": [{"delay": i % 50, "value": "a"}] if i % 5 else [], "again": []} for i in range(500)]
    config = Config.from_mapping({"join_ttl_s": 100})
    events = events_of(requests)
    settled, taken = settled_first(config, events, 4096)
    assert taken == len(events) and settled == every_record(config, events)


def test_nothing_is_settled_where_pairs_count_in_order_or_names_exceed_a_limit() -> None:
    requests = [{"ts": i, "models": ("m",), "pred": "a", "score": 0.5, "segment": None, "version": f"v{i}",
                 "labels": [], "again": []} for i in range(5)]
    events = events_of(requests)
    for options in ({"windows": ["rolling 10"]}, {"max_versions_per_model": 4}, {"rules": [
            {"name": "Low", "metric": "accuracy", "window": "tumbling_1h", "below": 0.6}]}):
        config = Config.from_mapping(options)
        assert settled_first(config, events, 4096)[1] == 0


@settings(max_examples=200, deadline=None)
@given(p_ids=st.lists(st.sampled_from(["a", "b", "c", "d", "é", "x" * 40]), max_size=30),
       l_ids=st.lists(st.sampled_from(["a", "b", "c", "e", "f"]), max_size=30),
       collide=st.sampled_from(["none", "all", "two"]))
def test_requests_are_numbered_by_the_row_where_their_id_first_comes(p_ids: list[str], l_ids: list[str],
                                                                     collide: str) -> None:
    """By the ids' hashes, checked; by a dict of the ids when two ids share a hash: the same numbers."""
    predictions, labels = PredictionColumns(), LabelColumns()
    predictions.add(list(range(len(p_ids))), [Prediction(i, "m", "v", 1.0, "a", None, ()) for i in p_ids])
    labels.add(list(range(len(l_ids))), [Label(i, 1.0, "a") for i in l_ids])
    if collide == "all":  # every id shares one hash
        predictions.id_hashes[:], labels.id_hashes[:] = 7, 7
    elif collide == "two":  # "a" and "b" share one
        for found, ids in ((predictions, p_ids), (labels, l_ids)):
            found.id_hashes[[i for i, x in enumerate(ids) if x in "ab"]] = 7
    first: dict[str, int] = {}
    expected = [first.setdefault(i, n) for n, i in enumerate(p_ids + l_ids)]
    pcode, lcode = _requests(predictions, labels)
    assert [*pcode.tolist(), *lcode.tolist()] == expected
