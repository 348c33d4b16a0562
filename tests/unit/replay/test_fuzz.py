"""Hostile input through the whole replay and the Python API: whatever the records hold (dates of
any shape, huge numbers, nesting, wrong types), nothing raises past the dead-letter path and every
record is accounted for."""

from __future__ import annotations

import json
import tempfile
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream import Monitor
from stream.config import Config
from stream.replay import replay

START = 1_767_225_600  # 2026-01-01T00:00:00Z

scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False)
           | st.text(max_size=12))
anything = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.text(max_size=4), inner, max_size=3), max_leaves=6)
dates = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30),
                     timezones=st.just(UTC) | st.builds(lambda m: timezone(timedelta(minutes=m)),
                                                        st.integers(-1439, 1439)))
timestamps = st.one_of(
    st.integers(START, START + 7200), st.integers(-(10**13), 10**14), st.floats(allow_nan=False, allow_infinity=False),
    dates.map(lambda d: d.isoformat()), dates.map(lambda d: d.isoformat(sep=" ")), st.text(max_size=30),
    st.sampled_from(["9999-12-31T23:59:59-23:59", "2026-11-30 06:00:00Z", "20261130T060000Z",
                     "2026-W48-1T06:00:00+00:00", "1999-12-31T23:59:59Z"]), anything)
ids = st.sampled_from(["a", "b", "c", "d"]) | anything
classes = st.sampled_from(["x", "y", 1, True, 0.5, 2**60, 123456789012345678901234567890]) | anything
predictions = st.fixed_dictionaries(
    {"request_id": ids, "model": st.sampled_from(["m", "n", "m\x00", " "]) | anything, "timestamp": timestamps,
     "prediction": classes},
    optional={"model_version": st.sampled_from(["v1", "v2"]) | anything, "segment": st.dictionaries(
        st.sampled_from(["k", "j"]) | st.text(max_size=3), st.sampled_from(["a", "b"]) | anything, max_size=2)
        | anything, "scores": st.dictionaries(st.sampled_from(["x", "y"]), st.floats(0, 1), min_size=1) | anything})
labels = st.fixed_dictionaries({"request_id": ids, "timestamp": timestamps, "label": classes})


def dump(value: Any) -> bytes:
    """JSON as any producer may write it (the standard library writes integers of any size)."""
    return json.dumps(value).encode()


lines = st.one_of(predictions.map(dump), st.binary(max_size=20), anything.map(dump))


def jsonl(path: Path, items: list[Any]) -> Path:
    path.write_bytes(b"".join((i if isinstance(i, bytes) else dump(i)).replace(b"\n", b" ") + b"\n"
                              for i in items))
    return path


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(predictions | lines, max_size=12), st.lists(labels, max_size=12))
def test_replay_of_anything_raises_nothing_and_accounts_for_every_record(
        preds: list[Any], labs: list[Any]) -> None:
    config = Config.from_mapping({"windows": ["tumbling 1h", "rolling 5", "cumulative"], "join_ttl": "1h",
                                  "max_future_s": 0})
    with tempfile.TemporaryDirectory() as folder:
        p, l = jsonl(Path(folder) / "p.jsonl", preds), jsonl(Path(folder) / "l.jsonl", labs)  # noqa: E741
        result = replay(p, l, config, Path(folder) / "m.jsonl", Path(folder) / "a.jsonl", Path(folder) / "d.jsonl")
    assert result.engine.balance() == {"predictions": 0, "labels": 0}
    health = result.engine.health
    assert health.labels == len(labs) and health.predictions <= len(preds)  # (blank lines are skipped)


@pytest.mark.slow
@settings(max_examples=150, deadline=None)
@given(st.lists(predictions | anything, max_size=12), st.lists(labels | anything, max_size=12))
def test_the_python_api_takes_anything_and_dead_letters_what_it_cannot_count(
        preds: list[Any], labs: list[Any]) -> None:
    monitor = Monitor(config={"windows": ["cumulative"], "source": {"predictions": preds, "labels": labs}})
    result = monitor.execute()
    assert result is not None
    assert result.health["balance"] == {"predictions": 0, "labels": 0}
    assert result.health["predictions"] == len(preds) and result.health["labels"] == len(labs)
