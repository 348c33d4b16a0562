"""Figures are a function of the records, not of their arrival: a request's winning label is
chosen by ``duplicate_labels`` from the labels alone, each model's winning prediction is its
earliest (ties by content), and a winner that arrives after another record paired revises the
pair. Any arrival order within the watermark gives the same final records and health counts as
time order, and they equal scikit-learn on the winning pairs."""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

from stream.config import Config
from stream.core.engine import Engine
from stream.core.join import label_rank
from stream.core.records import parse_label, parse_prediction

TTL_S = 100
WINDOW_S = 50
T0 = 1_600_000_000.0

label = st.fixed_dictionaries({"delay": st.integers(-20, 140), "value": st.sampled_from(["a", "b", "c"])})
again = st.fixed_dictionaries({"delay": st.integers(-30, 30), "pred": st.sampled_from(["a", "b"]),
                               "score": st.sampled_from([0.25, 0.5])})
request = st.fixed_dictionaries({
    "ts": st.integers(0, 300),
    "models": st.sampled_from([("m",), ("n",), ("m", "n")]),
    "pred": st.sampled_from(["a", "b"]),
    "score": st.floats(0.0, 1.0),
    "segment": st.sampled_from(["x", "y"]),
    "labels": st.lists(label, max_size=3),
    "again": st.lists(again, max_size=2),  # more predictions of the same request, by each model
})


def predictions(r: dict[str, Any], model: str) -> list[tuple[float, str, float]]:
    """A request's predictions by one model: (timestamp, class, score)."""
    first = (T0 + r["ts"], r["pred"], r["score"])
    return [first, *((first[0] + a["delay"], a["pred"], a["score"]) for a in r["again"])]


def records(requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, r in enumerate(requests):
        rid, ts = f"r{i}", T0 + r["ts"]
        for model in r["models"]:
            for pts, value, score in predictions(r, model):
                pred: dict[str, Any] = {"request_id": rid, "model": model, "timestamp": pts, "prediction": value,
                                        "segment": {"region": r["segment"]}}
                if model == "m":  # scored: histograms and exact score sums are revised too
                    pred["scores"] = {"a": score, "b": 1.0 - score}
                out.append(pred)
        for lab in r["labels"]:
            out.append({"request_id": rid, "timestamp": ts + lab["delay"], "label": lab["value"]})
    return out


def run(raw: list[dict[str, Any]], rule: str, batch_fold: bool = False) -> Engine:
    config = Config.from_mapping({"join_ttl_s": TTL_S, "watermark_lag_s": 100_000, "duplicate_labels": rule,
                                  "windows": [f"tumbling {WINDOW_S}s", "cumulative", "rolling 1000"]})
    engine = Engine(config, revisions=False)
    for i, obj in enumerate(raw):
        record = parse_prediction(obj) if "prediction" in obj else parse_label(obj)
        engine.receive(record)
        if batch_fold and i % 7 == 0:
            engine.flush()
    engine.finish()
    return engine


def finals(engine: Engine) -> dict[tuple[Any, ...], dict[str, Any]]:
    return {(r["model"], tuple(sorted(r["segment"].items())), r["window"]["name"], r["window"].get("start")): r
            for r in engine.metric_records if r["final"]}


def expected(requests: list[dict[str, Any]], rule: str) -> dict[tuple[str, int], list[tuple[str, str]]]:
    """The contract the obvious way: each request's winning label by its rank, the TTL applied."""
    pairs: dict[tuple[str, int], list[tuple[str, str]]] = defaultdict(list)
    for r in requests:
        if not r["labels"]:
            continue
        ts = T0 + r["ts"]
        ranked = sorted(((ts + lab["delay"], lab["value"]) for lab in r["labels"]), key=label_rank)
        won = ranked[0] if rule == "earliest" else ranked[-1]
        for model in r["models"]:
            first = min(predictions(r, model), key=lambda p: (p[0], p[1], p[2] if model == "m" else 0))
            if won[0] - first[0] <= TTL_S:
                pairs[(model, int(first[0] // WINDOW_S) * WINDOW_S)].append((won[1], first[1]))
    return pairs


@pytest.mark.parametrize("rule", ["earliest", "latest"])
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests=st.lists(request, min_size=1, max_size=25), seed=st.integers(0, 2**32 - 1))
def test_any_arrival_order_gives_the_records_of_time_order(requests: list[dict[str, Any]], seed: int,
                                                           rule: str) -> None:
    raw = records(requests)
    in_order = sorted(raw, key=lambda o: (o["timestamp"], "label" in o, label_rank((0, o.get("label")))))
    shuffled = raw[:]
    random.Random(seed).shuffle(shuffled)
    reference, other = run(in_order, rule), run(shuffled, rule, batch_fold=True)
    assert finals(other) == finals(reference)
    assert other.health == reference.health
    assert other.balance() == {"predictions": 0, "labels": 0}
    for (model, start), pairs in expected(requests, rule).items():
        tumbling = [r for k, r in finals(other).items() if k[0] == model and k[1] == () and k[3] == start]
        assert len(tumbling) == 1
        y_true, y_pred = zip(*pairs, strict=True)
        figures = tumbling[0]["metrics"]
        assert tumbling[0]["n"] == len(pairs)
        assert figures["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred), abs=1e-9)


def test_an_earlier_label_that_arrives_later_revises_the_pair() -> None:
    pred = {"request_id": "r", "model": "m", "timestamp": T0, "prediction": "a", "scores": {"a": 0.9, "b": 0.1}}
    late, early = ({"request_id": "r", "timestamp": T0 + 30, "label": "b"},
                   {"request_id": "r", "timestamp": T0 + 10, "label": "a"})
    engine = run([pred, late, early], "earliest")
    cumulative = [r for r in engine.metric_records if r["window"]["name"] == "cumulative" and not r["segment"]][-1]
    assert cumulative["metrics"]["accuracy"] == 1.0 and cumulative["n"] == 1
    assert engine.health.duplicate_labels == 1 and engine.health.pairs == 1 and engine.health.joined_labels == 1
    assert engine.health.label_lag_sum_s == 10


def test_latest_lets_a_correction_win_and_a_too_late_one_makes_the_pair_late() -> None:
    pred = {"request_id": "r", "model": "m", "timestamp": T0, "prediction": "a"}
    first, fix = ({"request_id": "r", "timestamp": T0 + 10, "label": "b"},
                  {"request_id": "r", "timestamp": T0 + 50, "label": "a"})
    for order in ([pred, first, fix], [pred, fix, first], [fix, first, pred]):
        engine = run(order, "latest")
        cumulative = [r for r in engine.metric_records if r["window"]["name"] == "cumulative" and not r["segment"]]
        assert cumulative[-1]["metrics"]["accuracy"] == 1.0
    too_late = {"request_id": "r", "timestamp": T0 + TTL_S + 1, "label": "a"}
    engine = run([pred, first, too_late], "latest")
    assert engine.health.pairs == 0 and engine.health.late_labels == 1 and engine.health.expired_predictions == 1
    assert engine.balance() == {"predictions": 0, "labels": 0}


def test_the_setting_is_checked() -> None:
    from stream.errors import ConfigError
    with pytest.raises(ConfigError, match="duplicate_labels"):
        Config.from_mapping({"duplicate_labels": "first"})


def test_a_winner_that_comes_after_its_windows_closed_changes_the_join_s_counts_only() -> None:
    """Beyond the guarantee (it arrives after the watermark passed its window's end plus the TTL),
    but it must neither fail nor lose count: a label stamped after the TTL made the pair late, and
    an earlier one comes once the prediction's windows are final and gone."""
    config = Config.from_mapping({"join_ttl_s": TTL_S, "windows": [f"tumbling {WINDOW_S}s"], "watermark_lag_s": 60})
    engine = Engine(config, revisions=False)
    for obj in ({"request_id": "r", "model": "m", "timestamp": T0, "prediction": "a"},
                {"request_id": "r", "timestamp": T0 + 150, "label": "a"},  # late: the pair is late
                {"request_id": "x", "model": "m", "timestamp": T0 + 300, "prediction": "a"},  # windows of r close
                {"request_id": "r", "timestamp": T0 + 20, "label": "b"}):  # earlier: wins
        engine.receive(parse_prediction(obj) if "prediction" in obj else parse_label(obj))
    engine.finish()
    assert engine.health.pairs == 1 and engine.health.late_labels == 0 and engine.health.joined_labels == 1
    assert engine.balance() == {"predictions": 0, "labels": 0}
    first = [r for r in engine.metric_records if r["window"]["start"] == T0 and not r["segment"]]
    assert [r["n"] for r in first] == [0]  # its final record went out before
