"""ROC AUC, average precision and calibration from score histograms, against scikit-learn."""

from __future__ import annotations

import warnings
import zlib
from collections import defaultdict
from typing import Any
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve
from sklearn.preprocessing import label_binarize

from stream.config import Config
from stream.core import ranking
from stream.core.engine import Engine
from stream.core.keys import record_key
from stream.core.merge import merge_states, metric_record, rolling_state
from stream.core.metrics import ScoreSums
from stream.core.ranking import BINS, GRID, ScoreBins, default_positive
from stream.core.records import parse_label, parse_prediction

T0 = 1_700_000_000
probability = st.floats(0.0, 1.0, allow_nan=False)
gridded = st.integers(0, GRID).map(lambda k: k / GRID)


def binary(rows: list[tuple[bool, float]]) -> dict[str, Any]:
    bins = ScoreBins()
    for positive, p in rows:
        bins.update("yes" if positive else "no", {"yes": p, "no": 1.0 - p})
    return bins.get(["no", "yes"])


def assert_binary_within_bounds(rows: list[tuple[bool, float]], m: dict[str, Any], exact: bool) -> None:
    y = np.array([r[0] for r in rows], dtype=int)
    p = np.array([r[1] for r in rows])
    slack = 1e-12 if not exact else 0.0
    auc, ap = skm.roc_auc_score(y, p), skm.average_precision_score(y, p)
    assert abs(m["roc_auc"] - auc) <= (0 if exact else m["roc_auc_error_bound"]) + 1e-12 + slack
    assert abs(m["average_precision"] - ap) <= (0 if exact else m["average_precision_error_bound"]) + 1e-12
    prob_true, prob_pred = calibration_curve(y, p, n_bins=10)
    cells = [c for c in m["calibration"] if c["count"]]
    assert [c["fraction_positive"] for c in cells] == pytest.approx(prob_true.tolist(), abs=1e-12)
    assert [c["mean_score"] for c in cells] == pytest.approx(prob_pred.tolist(), abs=1e-9)
    counts = np.bincount(np.searchsorted(np.linspace(0, 1, 11)[1:-1], p), minlength=10)
    expected_ece = sum(c["count"] / len(rows) * abs(c["mean_score"] - c["fraction_positive"]) for c in cells)
    assert [c["count"] for c in m["calibration"]] == counts.tolist()
    assert m["ece"] == pytest.approx(expected_ece, abs=1e-12)


two_classes = st.lists(st.tuples(st.booleans(), probability), min_size=2, max_size=300).filter(
    lambda rows: len({r[0] for r in rows}) == 2)


@settings(max_examples=300, deadline=None)
@given(two_classes)
def test_binary_figures_are_within_their_recorded_bounds_of_sklearn(rows: list[tuple[bool, float]]) -> None:
    assert_binary_within_bounds(rows, binary(rows), exact=False)


@pytest.mark.parametrize("python_bins", [0, BINS], ids=["numpy", "plain-python"])
@settings(max_examples=150, deadline=None)
@given(rows=two_classes)
def test_the_numpy_and_the_plain_python_sums_both_equal_sklearn(python_bins: int, rows: list[tuple[bool, float]]
                                                                ) -> None:
    """Which one sums a revision depends on how many bins it uses: each is checked on every size."""
    with mock.patch.object(ranking, "PYTHON_BINS", python_bins):
        assert_binary_within_bounds(rows, binary(rows), exact=False)


def _window_bins(rows: list[tuple[int, float]], names: list[str]) -> ScoreBins:
    """A window's bins: labels by index into ``names``, the first class's score ``p``, the rest
    sharing ``1 - p``."""
    bins = ScoreBins()
    for truth, p in rows:
        rest = (1.0 - p) / (len(names) - 1)
        bins.update(names[truth % len(names)], {name: p if i == 0 else rest for i, name in enumerate(names)})
    return bins


@pytest.mark.parametrize("python_bins", [0, ranking.PYTHON_BINS], ids=["all-numpy", "by-size"])
@settings(max_examples=100, deadline=None)
@given(windows=st.lists(st.tuples(st.sampled_from([["no", "yes"], ["a", "b", "c"]]),
                                  st.lists(st.tuples(st.integers(0, 2), probability), max_size=400)),
                        min_size=1, max_size=12),
       order=st.randoms(use_true_random=False))
def test_many_windows_ranked_together_get_each_one_alone_figures(python_bins: int,
                                                                 windows: list[tuple[list[str], list[Any]]],
                                                                 order: Any) -> None:
    """A flush ranks its windows together (``figures_many``): whichever others come with it, sparse
    or dense, binary or multiclass, each window's figures are the ones it gets alone, bit for bit."""
    with mock.patch.object(ranking, "PYTHON_BINS", python_bins):
        _check_ranked_together(windows, order)


def _check_ranked_together(windows: list[tuple[list[str], list[Any]]], order: Any) -> None:
    asked = [(_window_bins(rows, names), names, None) for names, rows in windows]
    alone = [bins.get(names) for bins, names, _ in asked]
    assert ranking.figures_many(asked) == alone
    shuffled = list(range(len(asked)))
    order.shuffle(shuffled)
    together = ranking.figures_many([asked[i] for i in shuffled[: len(shuffled) // 2 + 1]])
    assert together == [alone[i] for i in shuffled[: len(shuffled) // 2 + 1]]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), gridded), min_size=2, max_size=300).filter(
    lambda rows: len({r[0] for r in rows}) == 2))
def test_binary_figures_are_exact_on_the_grid(rows: list[tuple[bool, float]]) -> None:
    assert_binary_within_bounds(rows, binary(rows), exact=True)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("shape", ["uniform", "separated"])
def test_the_auc_bound_is_below_a_thousandth_on_continuous_scores(seed: int, shape: str) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 5000).astype(bool)
    p = rng.random(5000) if shape == "uniform" else np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1)
    m = binary(list(zip(y.tolist(), p.tolist(), strict=True)))
    assert m["roc_auc_error_bound"] < 1e-3
    assert abs(m["roc_auc"] - skm.roc_auc_score(y, p)) <= m["roc_auc_error_bound"]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.lists(st.floats(0.01, 1.0), min_size=3, max_size=3)),
                min_size=3, max_size=200).filter(lambda rows: len({r[0] for r in rows}) == 3))
def test_multiclass_one_vs_rest_macro_within_bounds(rows: list[tuple[int, list[float]]]) -> None:
    names = ["a", "b", "c"]
    y = np.array([r[0] for r in rows])
    probs = np.array([[w / sum(weights) for w in weights] for _, weights in rows])
    bins = ScoreBins()
    for truth, row in zip(y, probs, strict=True):
        bins.update(names[truth], dict(zip(names, row.tolist(), strict=True)))
    m = bins.get(names)
    auc = skm.roc_auc_score(y, probs, multi_class="ovr", average="macro")
    ap = skm.average_precision_score(label_binarize(y, classes=[0, 1, 2]), probs, average="macro")
    assert abs(m["roc_auc_ovr_macro"] - auc) <= m["roc_auc_error_bound"] + 1e-12
    assert abs(m["average_precision_macro"] - ap) <= m["average_precision_error_bound"] + 1e-12


def test_the_positive_class_by_default_and_by_setting() -> None:
    assert default_positive(["no", "yes"]) == "yes" and default_positive(["legit", "fraud"]) == "legit"
    assert default_positive(["0", "1"]) == "1" and default_positive(["TRUE", "FALSE"]) == "TRUE"
    rows = [(True, 0.9), (True, 0.3), (False, 0.6), (True, 0.8)]
    bins = ScoreBins()
    for positive, p in rows:
        bins.update("fraud" if positive else "legit", {"fraud": p, "legit": 1 - p})
    as_fraud, as_legit = bins.get(["fraud", "legit"], "fraud"), bins.get(["fraud", "legit"])
    y, p = [r[0] for r in rows], [r[1] for r in rows]
    assert as_fraud["roc_auc"] == as_legit["roc_auc"] == skm.roc_auc_score(y, p)  # symmetric
    assert as_fraud["average_precision"] == pytest.approx(skm.average_precision_score(y, p), abs=1e-12)
    assert as_legit["average_precision"] == pytest.approx(
        skm.average_precision_score([not t for t in y], [1 - q for q in p]), abs=1e-12)
    assert as_fraud["average_precision"] != as_legit["average_precision"]


def test_batches_and_single_updates_and_reverts_agree() -> None:
    rng = np.random.default_rng(3)
    one, batch = ScoreBins(), ScoreBins()
    names = ["a", "b"]
    keys, values = [], []
    for truth, p in zip(rng.integers(0, 2, 400).tolist(), rng.random(400).tolist(), strict=True):
        scores = {"a": p, "b": 1 - p}
        one.update(names[truth], scores)
        for sid, (name, value) in enumerate(scores.items()):
            keys.append(2 * sid + (name == names[truth]))
            values.append(value)
    batch.add(names, ScoreBins.count(np.array(keys), np.array(values)))
    assert (one.hist == batch.hist).all() and (one.sums == batch.sums).all()  # exact sums: any batching
    one.update("a", {"a": 0.3, "b": 0.7})
    one.revert("a", {"a": 0.3, "b": 0.7})
    assert (one.hist == batch.hist).all() and (one.sums == batch.sums).all()  # and an exact revert
    merged = ScoreBins()
    exported = batch.export()
    merged.merge(exported["score_classes"], exported["score_hist"], exported["score_sums"])
    assert (merged.hist == batch.hist).all()
    assert np.allclose(merged.sums.astype(float), batch.sums.astype(float), rtol=1e-15, atol=0)  # sent as floats


@settings(max_examples=100, deadline=None)
@given(two_classes, st.randoms(use_true_random=False))
def test_the_figures_do_not_depend_on_the_order_or_batching_of_pairs(rows: list[tuple[bool, float]],
                                                                     rnd: Any) -> None:
    def figures(ordered: list[tuple[bool, float]], cut: int) -> tuple[dict[str, Any], dict[str, float]]:
        bins, sums = ScoreBins(), ScoreSums()
        for part in (ordered[:cut], ordered[cut:]):
            keys = [k for positive, _ in part for k in (2 * 0 + positive, 2 * 1 + (not positive))]
            values = [v for _, p in part for v in (p, 1.0 - p)]
            bins.add(["yes", "no"], ScoreBins.count(np.array(keys, dtype=np.int64), np.array(values)))
            for positive, p in part:
                sums.update("yes" if positive else "no", {"yes": p, "no": 1.0 - p})
        return bins.get(["no", "yes"]), sums.get()

    shuffled = rows[:]
    rnd.shuffle(shuffled)
    assert figures(rows, len(rows)) == figures(shuffled, rnd.randint(0, len(rows)))


# --------------------------------------------------------------- the engine: every window kind, partials

scored_pair = st.tuples(st.integers(0, 7200), st.booleans(), st.booleans(), probability)  # ts, truth, guess, p


def feed(engine: Engine, rows: list[tuple[int, bool, bool, float]], keep: int | None = None) -> None:
    events = []
    for i, (offset, truth, guess, p) in enumerate(rows):
        if keep is not None and zlib.crc32(str(i).encode()) % 3 != keep:
            continue
        ts = T0 + offset
        events.append((ts, 0, i, {"request_id": str(i), "model": "m", "timestamp": ts,
                                  "prediction": "1" if guess else "0", "scores": {"1": p, "0": 1 - p}}))
        events.append((ts + 1, 1, i, {"request_id": str(i), "timestamp": ts + 1, "label": "1" if truth else "0"}))
    for _, kind, _, raw in sorted(events, key=lambda e: (e[0], e[1], e[2])):
        engine.receive(parse_prediction(raw) if kind == 0 else parse_label(raw))
    engine.finish()


WINDOWS: list[Any] = ["tumbling 1h", {"kind": "hopping", "size": "1h", "hop": "30m"}, "cumulative", "rolling 20"]


@settings(max_examples=60, deadline=None)
@given(st.lists(scored_pair, min_size=1, max_size=120))
def test_every_window_kind_equals_sklearn_on_its_pairs(rows: list[tuple[int, bool, bool, float]]) -> None:
    engine = Engine(Config.from_mapping({"join_ttl_s": 60, "windows": WINDOWS}))
    feed(engine, rows)
    specs = {s.name: s for s in engine.config.windows}
    order = sorted(range(len(rows)), key=lambda i: (rows[i][0] + 1, str(i)))  # completion order
    for record in (r for r in engine.metric_records if r["final"]):
        window = record["window"]
        if window["kind"] == "rolling":
            members = order[-specs[window["name"]].size_n:]
        else:
            start, end = window.get("start"), window.get("end")
            members = [i for i in range(len(rows)) if (start is None or T0 + rows[i][0] >= start)
                       and (end is None or T0 + rows[i][0] < end)]
        y = [rows[i][1] for i in members]
        p = [rows[i][3] for i in members]
        m = record["metrics"]
        assert record["n"] == len(members)
        if len(set(y)) < 2:
            assert "roc_auc" not in m
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert abs(m["roc_auc"] - skm.roc_auc_score(y, p)) <= m["roc_auc_error_bound"] + 1e-12
            assert abs(m["average_precision"] - skm.average_precision_score(y, p)) <= (
                m["average_precision_error_bound"] + 1e-12)


@settings(max_examples=40, deadline=None)
@given(st.lists(scored_pair, min_size=1, max_size=120))
def test_partitions_partials_merge_to_the_figures_of_one_engine(rows: list[tuple[int, bool, bool, float]]) -> None:
    config = Config.from_mapping({"join_ttl_s": 60, "windows": WINDOWS})
    whole_engine = Engine(config)
    feed(whole_engine, rows)
    whole = {record_key(r): r for r in whole_engine.metric_records if r["final"]}
    latest: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
    for part in range(3):
        engine = Engine(config, emit_partials=True)
        feed(engine, rows, keep=part)
        for partial in engine.metric_records:
            latest[record_key(partial)][part] = partial
    assert set(latest) == set(whole)
    for key, by_part in latest.items():
        first = next(iter(by_part.values()))
        window = first["window"]
        state = (rolling_state(list(by_part.values()), window["size_n"]) if window["kind"] == "rolling"
                 else merge_states(list(by_part.values())))
        merged = metric_record(first["model"], first["model_version"], first["segment"], window, state, True, "x")
        expected = whole[key]["metrics"]
        for name in ("roc_auc", "roc_auc_error_bound", "average_precision", "average_precision_error_bound", "ece"):
            assert (name in merged["metrics"]) == (name in expected), name
            if name in expected:
                assert merged["metrics"][name] == pytest.approx(expected[name], abs=1e-12), name
        assert [c["count"] for c in merged["metrics"].get("calibration", [])] == [
            c["count"] for c in expected.get("calibration", [])]


def test_positive_classes_pick_the_class_the_figures_are_about() -> None:
    rows = [(True, 0.9), (True, 0.35), (False, 0.6), (True, 0.8), (False, 0.1), (False, 0.45)]
    for setting, positive in (({}, "1"), ({"positive_classes": {"m*": "0"}}, "0")):
        engine = Engine(Config.from_mapping({"windows": ["cumulative"], **setting}))
        feed(engine, [(i, truth, truth, p) for i, (truth, p) in enumerate(rows)])
        final = next(r for r in engine.metric_records if r["final"])["metrics"]
        y = [(("1" if truth else "0") == positive) for truth, _ in rows]
        scores = [p if positive == "1" else 1 - p for _, p in rows]
        assert final["average_precision"] == pytest.approx(skm.average_precision_score(y, scores), abs=1e-12)
        assert final["ece"] == pytest.approx(
            sum(abs(s - t) for s, t in zip(scores, y, strict=True)) / len(rows), abs=1e-12)  # one pair per bin
