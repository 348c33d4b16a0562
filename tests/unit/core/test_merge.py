"""Partials of input partitions, merged, equal the record one engine computes over everything."""

from __future__ import annotations

import zlib
from collections import defaultdict
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.config import Config
from stream.core.engine import Engine
from stream.core.keys import record_key
from stream.core.merge import merge_states, metric_record
from stream.core.records import parse_label, parse_prediction

request = st.tuples(st.integers(0, 900), st.sampled_from("abc"), st.sampled_from("abcd"),
                    st.floats(0.05, 0.95), st.sampled_from(["home", "away"]))


def run(config: Config, requests: list[tuple[int, str, str, float, str]], partials: bool,
        keep: int | None = None, parts: int = 3) -> list[dict[str, Any]]:
    engine = Engine(config, emit_partials=partials)
    events = []
    for i, (offset, guess, truth, p, venue) in enumerate(requests):
        ts = 1_600_000_000 + offset
        if keep is not None and zlib.crc32(str(i).encode()) % parts != keep:
            continue
        scores = {"a": p, "b": 1 - p}
        events.append((ts, 0, {"request_id": str(i), "model": "m", "timestamp": ts, "prediction": guess,
                               "scores": scores, "segment": {"venue": venue}}))
        events.append((ts + 5, 1, {"request_id": str(i), "timestamp": ts + 5, "label": truth}))
    for _, kind, raw in sorted(events, key=lambda e: (e[0], e[1])):
        engine.receive(parse_prediction(raw) if kind == 0 else parse_label(raw))
    engine.finish()
    return engine.metric_records


@settings(max_examples=60, deadline=None)
@given(st.lists(request, min_size=1, max_size=80))
def test_merged_partials_equal_one_engine(requests: list[tuple[int, str, str, float, str]]) -> None:
    config = Config.from_mapping({"join_ttl_s": 60, "windows": ["tumbling 5m", "tumbling 15m"]})
    whole = {record_key(r): r for r in run(config, requests, partials=False) if r["final"]}
    latest: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
    for part in range(3):
        for partial in run(config, requests, partials=True, keep=part):
            latest[record_key(partial)][part] = partial
    assert set(latest) == set(whole)
    for key, by_part in latest.items():
        first = next(iter(by_part.values()))
        merged = metric_record(first["model"], first["model_version"], first["segment"], first["window"],
                               merge_states(list(by_part.values())), True, "x")
        expected = whole[key]
        assert merged["n"] == expected["n"] and merged["predictions"] == expected["predictions"]
        assert merged["confusion_matrix"] == expected["confusion_matrix"]
        assert merged["metrics"] == expected["metrics"]  # bit for bit: partials carry the exact sums


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.floats(-100, 100), st.floats(-100, 100)), min_size=2, max_size=60), st.integers(1, 4))
def test_regression_partials_merge_exactly(rows: list[tuple[float, float]], parts: int) -> None:
    import numpy as np
    from sklearn import metrics as skm

    from stream.core.merge import WindowState
    from stream.core.metrics import RegressionStats, ScoreSums

    exported = []
    for part in range(parts):
        stats = RegressionStats()
        for truth, guess in rows[part::parts]:
            stats.update(truth, guess)
        exported.append(WindowState(0, [], np.zeros((0, 0), dtype=np.int64), ScoreSums(), stats).export())
    merged = merge_states(exported).figures()["metrics"]
    y_true, y_pred = np.array([t for t, _ in rows]), np.array([p for _, p in rows])
    assert merged["mae"] == pytest.approx(skm.mean_absolute_error(y_true, y_pred), abs=1e-9)
    if np.ptp(y_true) > 1e-6:
        assert merged["r2"] == pytest.approx(skm.r2_score(y_true, y_pred), rel=1e-9, abs=1e-9)


def test_partials_of_workers_of_two_versions_merge() -> None:
    """During an upgrade a group holds both: an earlier version's partial has only the float form."""
    import numpy as np

    from stream.core.merge import WindowState
    from stream.core.metrics import RegressionStats, ScoreSums

    rows = [(3.0, 2.5), (-0.5, 0.0), (2.0, 2.0), (7.0, 8.0), (1.5, 1.0)]
    exported = []
    for part in range(2):
        stats = RegressionStats()
        for truth, guess in rows[part::2]:
            stats.update(truth, guess)
        exported.append(WindowState(0, [], np.zeros((0, 0), dtype=np.int64), ScoreSums(), stats).export())
    del exported[1]["regression_exact"]
    whole = RegressionStats()
    for truth, guess in rows:
        whole.update(truth, guess)
    assert merge_states(exported).figures()["metrics"] == pytest.approx(whole.get(), rel=1e-12)


def test_scored_partials_of_workers_of_two_versions_merge() -> None:
    """An earlier version's scored partial carries its sums as floats only; merged with this
    version's, the figures are within float rounding of the whole."""
    config = Config.from_mapping({"join_ttl_s": 60, "windows": ["tumbling 15m"]})
    requests = [(i * 7, "ab"[i % 2], "ab"[i % 3 == 0], 0.05 + 0.9 * ((i * 37) % 100) / 100, "home") for i in range(60)]
    whole = {record_key(r): r for r in run(config, requests, partials=False) if r["final"] and not r["segment"]}
    parts = [{record_key(p): p for p in run(config, requests, partials=True, keep=k, parts=2)} for k in range(2)]
    for key, expected in whole.items():
        old = dict(parts[1][key])
        del old["score_units"], old["score_sums_exact"]
        merged = metric_record("m", "unknown", {}, expected["window"], merge_states([parts[0][key], old]), True, "x")
        assert merged["n"] == expected["n"] and merged["confusion_matrix"] == expected["confusion_matrix"]
        for name in ("log_loss", "brier", "roc_auc", "ece"):
            assert merged["metrics"][name] == pytest.approx(expected["metrics"][name], rel=1e-12), name


def test_rolling_windows_of_partitions_merge_into_the_last_pairs_of_all() -> None:
    from stream.core.merge import rolling_state

    pairs = [[1000.0 + i // 2, f"r{i:03d}", "a" if i % 3 else "b", "a", None, None] for i in range(100)]
    partials = [{"pairs": pairs[0::2], "regression": None}, {"pairs": pairs[1::2] + pairs[:10], "regression": None}]
    state = rolling_state(partials, 30)  # the last 30 by completion time, ties by request id: r070 to r099
    expected = [p for p in pairs if p[1] >= "r070"]
    assert state.n == 30 and state.classes == ["a", "b"]
    assert state.counts.tolist() == [[sum(p[2] == "a" for p in expected), 0], [sum(p[2] == "b" for p in expected), 0]]
