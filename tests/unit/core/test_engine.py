"""The engine end to end on random traffic: final window metrics equal scikit-learn on the true pairs."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

from stream.config import Config
from stream.core.engine import Engine
from stream.core.records import parse_label, parse_prediction
from stream.core.rules import rfc3339

TTL_S = 100
WINDOW_S = 50
T0 = 1_600_000_000.0  # 2020-09-13: records before 2000 are refused

request = st.fixed_dictionaries({
    "ts": st.integers(0, 400),
    "pred": st.sampled_from(["a", "b", "c"]),
    "label": st.one_of(st.none(), st.sampled_from(["a", "b", "c", "d"])),
    "delay": st.integers(-20, 150),  # negative: the label is stamped before its prediction
    "dup_pred": st.one_of(st.none(), st.sampled_from(["a", "b"])),
    "dup_label": st.one_of(st.none(), st.sampled_from(["a", "d"])),
    "dup_label_delay": st.integers(0, 250),
})


def events(requests: list[dict[str, Any]]) -> list[tuple[float, int, int, dict[str, Any]]]:
    out = []
    for i, r in enumerate(requests):
        rid, ts = f"r{i}", T0 + r["ts"]
        out.append((ts, 0, len(out), {"request_id": rid, "model": "m", "timestamp": ts, "prediction": r["pred"]}))
        if r["dup_pred"] is not None:
            out.append((ts + 1, 0, len(out),
                        {"request_id": rid, "model": "m", "timestamp": ts + 1, "prediction": r["dup_pred"]}))
        if r["label"] is not None:
            lts = ts + r["delay"]
            out.append((lts, 1, len(out), {"request_id": rid, "timestamp": lts, "label": r["label"]}))
            if r["dup_label"] is not None:
                dts = lts + r["dup_label_delay"]
                out.append((dts, 1, len(out), {"request_id": rid, "timestamp": dts, "label": r["dup_label"]}))
    out.sort(key=lambda e: (e[0], e[1], e[2]))
    return out


def expected_pairs(requests: list[dict[str, Any]]) -> dict[int, list[tuple[str, str]]]:
    """The contract, computed the obvious way: the first prediction and the earliest label win (ties
    by the label's value), TTL applies."""
    by_window: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for r in requests:
        if r["label"] is None or r["delay"] > TTL_S:
            continue
        won = r["label"]
        if r["dup_label"] is not None and r["dup_label_delay"] == 0:
            won = min(won, r["dup_label"])
        start = int((T0 + r["ts"]) // WINDOW_S) * WINDOW_S
        by_window[start].append((won, r["pred"]))
    return by_window


def run(requests: list[dict[str, Any]]) -> Engine:
    config = Config.from_mapping({"join_ttl_s": TTL_S, "windows": [f"tumbling {WINDOW_S}s", "cumulative"],
                                  "emit_interval_s": 10})
    engine = Engine(config)
    for _, kind, _, raw in events(requests):
        engine.receive(parse_prediction(raw) if kind == 0 else parse_label(raw))
    engine.finish()
    return engine


@settings(max_examples=150, deadline=None)
@given(st.lists(request, min_size=1, max_size=60))
def test_final_window_metrics_equal_sklearn(requests: list[dict[str, Any]]) -> None:
    engine = run(requests)
    finals = {r["window"]["start"]: r for r in engine.metric_records
              if r["final"] and r["window"]["kind"] == "tumbling"}
    expected = expected_pairs(requests)
    for start, pairs in expected.items():
        record = finals[start]
        y_true, y_pred = [t for t, _ in pairs], [p for _, p in pairs]
        assert record["n"] == len(pairs)
        assert record["metrics"]["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred), abs=1e-9)
        f1 = skm.f1_score(y_true, y_pred, average="macro", zero_division=0)
        assert record["metrics"]["f1_macro"] == pytest.approx(f1, abs=1e-9)
    assert all(r["n"] == 0 for s, r in finals.items() if s not in expected)
    # Exactly one final record per window, and it is the last record of its window.
    last: dict[tuple[str, int], dict[str, Any]] = {}
    for r in engine.metric_records:
        last[(r["window"]["name"], r["window"].get("start", 0))] = r
    assert all(r["final"] for r in last.values())
    assert sum(r["final"] for r in engine.metric_records) == len(last)


@settings(max_examples=150, deadline=None)
@given(st.lists(request, min_size=1, max_size=60))
def test_health_counters_account_for_every_record(requests: list[dict[str, Any]]) -> None:
    engine = run(requests)
    h = engine.health
    n_labels = sum(r["label"] is not None for r in requests)
    n_dup_labels = sum(r["label"] is not None and r["dup_label"] is not None for r in requests)
    assert h.predictions == len(requests) + sum(r["dup_pred"] is not None for r in requests)
    assert h.labels == n_labels + n_dup_labels
    assert engine.balance() == {"predictions": 0, "labels": 0}
    assert engine.pending() == (0, 0)
    assert h.pairs == sum(len(p) for p in expected_pairs(requests).values())
    assert h.duplicate_predictions == sum(r["dup_pred"] is not None for r in requests)
    late = sum(r["label"] is not None and r["delay"] > TTL_S for r in requests)
    assert h.late_labels >= late
    assert h.expired_predictions == len(requests) - h.pairs


def test_segments_get_their_own_series_and_the_overall_one() -> None:
    engine = Engine(Config.from_mapping({"windows": ["cumulative"]}))
    for i, venue in enumerate(["home", "away", "home"]):
        engine.prediction(parse_prediction({"request_id": str(i), "model": "m", "timestamp": T0 + 10 + i,
                                            "prediction": 1, "segment": {"venue": venue}}))
        engine.label(parse_label({"request_id": str(i), "timestamp": T0 + 20 + i, "label": i % 2}))
    engine.finish()
    by_segment = {tuple(r["segment"].items()): r for r in engine.metric_records}
    assert by_segment[()]["n"] == 3
    assert by_segment[(("venue", "home"),)]["n"] == 2
    assert by_segment[(("venue", "home"),)]["confusion_matrix"] == [[0, 2], [0, 0]]
    assert by_segment[(("venue", "away"),)]["metrics"]["accuracy"] == 1.0


def test_regression_models_report_regression_metrics() -> None:
    engine = Engine(Config.from_mapping({"windows": ["cumulative", "rolling 2"], "regression_models": ["price*"]}))
    for i, (guess, truth) in enumerate([(1.0, 2.0), (3.0, 3.0), (5.0, 4.0)]):
        engine.prediction(parse_prediction({"request_id": str(i), "model": "price-v", "timestamp": T0 + i,
                                            "prediction": guess}))
        engine.label(parse_label({"request_id": str(i), "timestamp": T0 + i, "label": truth}))
    engine.finish()
    records = {r["window"]["name"]: r for r in engine.metric_records}
    assert records["cumulative"]["metrics"]["mae"] == pytest.approx(2 / 3)
    assert records["cumulative"]["metrics"]["r2"] == pytest.approx(skm.r2_score([2, 3, 4], [1, 3, 5]))
    assert records["rolling_2"]["n"] == 2
    assert records["rolling_2"]["metrics"]["mean_error"] == pytest.approx(0.5)


def test_a_class_label_for_a_regression_model_is_dead_lettered() -> None:
    engine = Engine(Config.from_mapping({"windows": ["cumulative"], "regression_models": ["price"]}))
    engine.prediction(parse_prediction({"request_id": "x", "model": "price", "timestamp": T0 + 1, "prediction": 2.5}))
    engine.label(parse_label({"request_id": "x", "timestamp": T0 + 2, "label": "expensive"}))
    engine.finish()
    assert [d["reason"] for d in engine.dead_letters] == ["regression models need numbers, got 'expensive'"]
    assert engine.balance() == {"predictions": 0, "labels": 0}


def test_limits_fold_classes_and_refuse_models() -> None:
    engine = Engine(Config.from_mapping({"windows": ["cumulative"], "max_classes": 2, "max_models": 1}))
    for i, cls in enumerate(["a", "b", "c", "d"]):
        engine.prediction(parse_prediction({"request_id": str(i), "model": "m", "timestamp": T0 + i,
                                            "prediction": cls}))
        engine.label(parse_label({"request_id": str(i), "timestamp": T0 + i, "label": cls}))
    engine.prediction(parse_prediction({"request_id": "z", "model": "other", "timestamp": T0 + 9, "prediction": "a"}))
    engine.finish()
    assert engine.metric_records[0]["classes"] == ["__other__", "a", "b"]
    assert engine.health.folded_classes == 4  # c and d, as prediction and as label
    assert engine.health.refused_models == 1
    assert "max_models" in engine.dead_letters[0]["reason"]
    assert engine.balance() == {"predictions": 0, "labels": 0}


def test_rolling_window_keeps_the_last_n_pairs() -> None:
    engine = Engine(Config.from_mapping({"windows": ["rolling 3"]}))
    outcomes = [("a", "a"), ("a", "b"), ("b", "b"), ("b", "b"), ("a", "a")]
    for i, (truth, guess) in enumerate(outcomes):
        engine.prediction(parse_prediction({"request_id": str(i), "model": "m", "timestamp": T0 + i,
                                            "prediction": guess}))
        engine.label(parse_label({"request_id": str(i), "timestamp": T0 + i, "label": truth}))
    engine.finish()
    (record,) = engine.metric_records
    assert record["n"] == 3 and record["metrics"]["accuracy"] == 1.0
    assert record["label_coverage"] is None and record["final"]


scored = st.tuples(
    st.sampled_from(["a", "b", "c"]),  # the label
    st.permutations(["a", "b", "c"]).flatmap(  # the scores' classes, in any order, and their weights
        lambda order: st.tuples(st.just(order), st.lists(st.floats(0.01, 1.0), min_size=3, max_size=3))),
    st.booleans(),  # label first
)


@pytest.mark.parametrize("max_layouts", [4096, 1])  # 1: every other order of classes stored inline
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(scored, min_size=1, max_size=40))
def test_scores_of_pending_predictions_give_sklearn_log_loss_and_brier(
        rows: list[tuple[str, tuple[list[str], list[float]], bool]], max_layouts: int,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Pending predictions are packed into bytes (their scores by class-order layout): the pairs'
    log loss and Brier score still equal scikit-learn's."""
    monkeypatch.setattr("stream.core.pending.MAX_LAYOUTS", max_layouts)  # the same for every example
    engine = Engine(Config.from_mapping({"join_ttl_s": TTL_S, "windows": ["tumbling 1h"]}))
    y_true, y_prob = [], []
    for i, (label, (order, weights), label_first) in enumerate(rows):
        probs = {c: w / sum(weights) for c, w in zip(order, weights, strict=True)}
        prediction = parse_prediction({"request_id": f"r{i}", "model": "m", "timestamp": T0, "prediction": "a",
                                       "scores": probs})
        truth = parse_label({"request_id": f"r{i}", "timestamp": T0 + 1, "label": label})
        for record in (truth, prediction) if label_first else (prediction, truth):
            engine.receive(record)
        y_true.append(label)
        y_prob.append([probs[c] for c in ("a", "b", "c")])
    engine.finish()
    final = next(r for r in engine.metric_records if r["final"])
    assert final["metrics"]["log_loss"] == pytest.approx(skm.log_loss(y_true, y_prob, labels=["a", "b", "c"]),
                                                         abs=1e-9)
    assert final["metrics"]["brier"] == pytest.approx(
        skm.brier_score_loss(y_true, y_prob, labels=["a", "b", "c"]), abs=1e-9)


MODELS = ("champion", "challenger", "shadow")
shared_request = st.fixed_dictionaries({
    "ts": st.integers(0, 400),
    "models": st.lists(st.tuples(st.sampled_from(MODELS), st.integers(0, 60), st.sampled_from(["a", "b"])),
                       min_size=1, max_size=4),  # (model, seconds after the request, prediction)
    "label": st.one_of(st.none(), st.sampled_from(["a", "b"])),
    "delay": st.integers(-20, 150),
})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(shared_request, min_size=1, max_size=40))
def test_several_models_scoring_one_request_each_pair_with_its_label(requests: list[dict[str, Any]]) -> None:
    # Each model scores a first request before anything else: labels are kept for the other models'
    # predictions once the engine has met a second model.
    out = [(T0 - 1000, 0, n, {"request_id": "first", "model": m, "timestamp": T0 - 1000, "prediction": "a"})
           for n, m in enumerate(MODELS)]
    expected: dict[tuple[str, int], list[tuple[str, str]]] = defaultdict(list)
    joined_labels = 0
    for i, r in enumerate(requests):
        rid, ts = f"r{i}", T0 + r["ts"]
        seen, paired = set(), False
        for model, after, guess in sorted(r["models"], key=lambda m: (m[1], m[2])):  # the earliest wins, ties by class
            pts = ts + after
            out.append((pts, 0, len(out), {"request_id": rid, "model": model, "timestamp": pts, "prediction": guess}))
            if model not in seen and r["label"] is not None and ts + r["delay"] - pts <= TTL_S:
                expected[(model, int(pts // WINDOW_S) * WINDOW_S)].append((r["label"], guess))
                paired = True
            seen.add(model)
        if r["label"] is not None:
            lts = ts + r["delay"]
            out.append((lts, 1, len(out), {"request_id": rid, "timestamp": lts, "label": r["label"]}))
            joined_labels += paired
    out.sort(key=lambda e: (e[0], e[1], e[2]))
    engine = Engine(Config.from_mapping({"join_ttl_s": TTL_S, "windows": [f"tumbling {WINDOW_S}s"]}))
    for _, kind, _, raw in out:
        engine.receive(parse_prediction(raw) if kind == 0 else parse_label(raw))
    engine.finish()
    finals = {(r["model"], r["window"]["start"]): r for r in engine.metric_records if r["final"]}
    for key, pairs in expected.items():
        record = finals[key]
        y_true, y_pred = [t for t, _ in pairs], [p for _, p in pairs]
        assert record["n"] == len(pairs), key
        assert record["metrics"]["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred), abs=1e-9)
    assert all(r["n"] == 0 for key, r in finals.items() if key not in expected)
    h = engine.health
    assert engine.balance() == {"predictions": 0, "labels": 0} and engine.pending() == (0, 0)
    assert h.pairs == sum(len(p) for p in expected.values()) and h.joined_labels == joined_labels
    assert h.duplicate_predictions == sum(len(r["models"]) - len({m for m, _, _ in r["models"]}) for r in requests)


def test_a_label_that_waited_for_its_prediction_and_is_refused_says_where_it_came_from() -> None:
    engine = Engine(Config.from_mapping({"windows": ["cumulative"]}))
    engine.label(parse_label({"request_id": "r", "timestamp": T0 + 1, "label": 0.5}),
                 topic="labels", partition=3, offset=7)  # before its prediction: it waits
    engine.prediction(parse_prediction({"request_id": "r", "model": "m", "timestamp": T0, "prediction": "a"}))
    [dead] = engine.dead_letters
    assert (dead["topic"], dead["partition"], dead["offset"], dead["request_id"], dead["model"]) == (
        "labels", 3, 7, "r", "m")
    assert "not a class" in dead["reason"]


def test_a_revision_with_new_predictions_only_keeps_its_figures_and_a_new_pair_changes_them() -> None:
    engine = Engine(Config.from_mapping({"windows": ["tumbling 1h"], "emit_interval": "1m"}))

    def step(*records: Any) -> dict[str, Any]:
        for record in records:
            engine.receive(record)
        engine.flush()
        revision = engine.metric_records[-1]
        engine.metric_records.clear()
        return revision

    def prediction(i: int, ts: float) -> Any:
        return parse_prediction({"request_id": f"r{i}", "model": "m", "timestamp": ts, "prediction": "a",
                                 "scores": {"a": 0.8, "b": 0.2}})

    first = step(prediction(0, T0), prediction(1, T0 + 1),
                 parse_label({"request_id": "r0", "timestamp": T0 + 2, "label": "a"}))
    more = step(prediction(2, T0 + 60))
    assert (more["predictions"], more["label_coverage"]) == (3, 1 / 3) and more["n"] == first["n"] == 1
    assert {k: v for k, v in more.items() if k not in ("predictions", "label_coverage", "emitted_at")} == {
        k: v for k, v in first.items() if k not in ("predictions", "label_coverage", "emitted_at")}
    paired = step(parse_label({"request_id": "r1", "timestamp": T0 + 120, "label": "b"}))
    assert paired["n"] == 2 and paired["metrics"]["accuracy"] == 0.5 and paired["metrics"]["log_loss"] != (
        first["metrics"]["log_loss"])


def test_records_and_alerts_at_the_end_of_input_carry_the_last_event_time_reached() -> None:
    """Replay's clock is event time; at the end of input the watermark passes every window, and
    what it emits then is stamped with the last event time reached, not with the epoch."""
    config = Config.from_mapping({"windows": ["tumbling 1h", "cumulative"], "rules": [
        {"name": "Low", "metric": "accuracy", "window": "cumulative", "below": 0.5, "min_samples": 1}]})
    engine = Engine(config)
    for i in range(3):  # all within one emit interval: nothing is emitted before the end
        engine.receive(parse_prediction({"request_id": f"r{i}", "model": "m", "timestamp": T0 + i, "prediction": "a"}))
        engine.receive(parse_label({"request_id": f"r{i}", "timestamp": T0 + 10 + i, "label": "b"}))
    last = engine.watermark
    engine.finish()
    stamp = rfc3339(last)
    assert {r["emitted_at"] for r in engine.metric_records} == {stamp}
    assert len(engine.metric_records) == 2 and all(r["final"] for r in engine.metric_records)
    (alert,) = engine.alert_events
    assert (alert["status"], alert["starts_at"]) == ("firing", stamp)
    assert "over 3 labeled predictions since the series began" in alert["annotations"]["description"]
