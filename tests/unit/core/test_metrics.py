"""Every metric against scikit-learn (the oracle), on random inputs, to 1e-9."""

from __future__ import annotations

import math
import warnings
from fractions import Fraction
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

from stream.core.confusion import ConfusionMatrix
from stream.core.metrics import RegressionStats, ScoreSums, classification, units, units_by_cell, wilson_interval

TOL = 1e-9
CLASSES = ["a", "b", "c", "d", "e"]


def pairs_strategy(max_classes: int) -> st.SearchStrategy[list[tuple[str, str]]]:
    """Pairs over a few classes, so some appear only as predictions or only as labels."""
    classes = st.sampled_from(CLASSES[:max_classes])
    return st.lists(st.tuples(classes, classes), min_size=1, max_size=200)


def ours(pairs: list[tuple[str, str]]) -> dict[str, object]:
    cm = ConfusionMatrix()
    for truth, guess in pairs:
        cm.update(truth, guess)
    return classification(cm.counts(), cm.classes())


def oracle(pairs: list[tuple[str, str]]) -> dict[str, object]:
    y_true = [t for t, _ in pairs]
    y_pred = [p for _, p in pairs]
    labels = sorted(set(y_true) | set(y_pred))
    out: dict[str, object] = {"accuracy": skm.accuracy_score(y_true, y_pred)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out["balanced_accuracy"] = skm.balanced_accuracy_score(y_true, y_pred)
        out["cohen_kappa"] = skm.cohen_kappa_score(y_true, y_pred)
    for average in ("macro", "micro", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(y_true, y_pred, average=average, zero_division=0)
        out[f"precision_{average}"], out[f"recall_{average}"], out[f"f1_{average}"] = p, r, f
    p, r, f, s = skm.precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    out["precision"] = dict(zip(labels, p, strict=True))
    out["recall"] = dict(zip(labels, r, strict=True))
    out["f1"] = dict(zip(labels, f, strict=True))
    out["support"] = dict(zip(labels, s, strict=True))
    out["mcc"] = skm.matthews_corrcoef(y_true, y_pred)
    return out


def assert_same(mine: dict[str, object], theirs: dict[str, object]) -> None:
    for name, expected in theirs.items():
        got = mine[name]
        if isinstance(expected, dict):
            assert isinstance(got, dict) and set(got) == set(expected), name
            for cls in expected:
                assert got[cls] == pytest.approx(float(expected[cls]), abs=TOL), f"{name}[{cls}]"
        elif isinstance(expected, float) and math.isnan(expected):
            assert got is None, f"{name}: scikit-learn gives NaN, we give {got}"
        else:
            assert got == pytest.approx(float(expected), abs=TOL), name  # type: ignore[arg-type]


# Small matrices are computed in plain Python, larger ones by numpy: both, binary and multiclass.
@pytest.mark.slow
@pytest.mark.parametrize("small_matrix", [0, 100], ids=["numpy", "python"])
@pytest.mark.parametrize("n_classes", [2, 5], ids=["binary", "multiclass"])
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_metrics_equal_sklearn(data: st.DataObject, n_classes: int, small_matrix: int,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("stream.core.metrics.SMALL_MATRIX", small_matrix)
    pairs = data.draw(pairs_strategy(n_classes))
    assert_same(ours(pairs), oracle(pairs))


@settings(max_examples=100, deadline=None)
@given(pairs_strategy(4), st.data())
def test_revert_undoes_update(pairs: list[tuple[str, str]], data: st.DataObject) -> None:
    """Rolling windows rely on revert: adding then reverting extra pairs leaves the same figures."""
    extra = data.draw(pairs_strategy(5))
    cm = ConfusionMatrix()
    for truth, guess in pairs + extra:
        cm.update(truth, guess)
    for truth, guess in extra:
        cm.revert(truth, guess)
    assert_same(classification(cm.counts(), cm.classes()), oracle(pairs))


probabilities = st.lists(st.floats(0.001, 1.0), min_size=3, max_size=3)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(CLASSES[:3]), probabilities), min_size=2, max_size=100))
def test_log_loss_and_brier_equal_sklearn(rows: list[tuple[str, list[float]]]) -> None:
    classes = CLASSES[:3]
    sums = ScoreSums()
    y_true, y_prob = [], []
    for truth, raw in rows:
        probs = [p / sum(raw) for p in raw]
        sums.update(truth, dict(zip(classes, probs, strict=True)))
        y_true.append(truth)
        y_prob.append(probs)
    got = sums.get()
    assert got["log_loss"] == pytest.approx(skm.log_loss(y_true, y_prob, labels=classes), abs=TOL)
    assert got["brier"] == pytest.approx(skm.brier_score_loss(y_true, y_prob, labels=classes), abs=TOL)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["no", "yes"]), st.floats(0.0, 1.0)), min_size=2, max_size=100))
def test_binary_brier_and_log_loss_equal_sklearn(rows: list[tuple[str, float]]) -> None:
    sums = ScoreSums()
    for truth, p_yes in rows:
        sums.update(truth, {"no": 1 - p_yes, "yes": p_yes})
    y_true = [t for t, _ in rows]
    y_prob = [[1 - p, p] for _, p in rows]
    got = sums.get()
    assert got["brier"] == pytest.approx(skm.brier_score_loss(y_true, y_prob, labels=["no", "yes"]), abs=TOL)
    assert got["log_loss"] == pytest.approx(skm.log_loss(y_true, y_prob, labels=["no", "yes"]), abs=TOL)


# Magnitudes under 1e-150 square into subnormals, where neither sum of squares keeps its digits
# (r2 of [0, 0, 3.9e-162] against zeros: -0.5 here, -2.0 in scikit-learn): no figure to compare.
finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False).filter(lambda x: x == 0.0 or abs(x) >= 1e-150)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(finite, finite), min_size=1, max_size=200))
def test_regression_equal_sklearn(rows: list[tuple[float, float]]) -> None:
    stats = RegressionStats()
    for truth, guess in rows:
        stats.update(truth, guess)
    y_true = np.array([t for t, _ in rows])
    y_pred = np.array([p for _, p in rows])
    got = stats.get()
    assert got["mae"] == pytest.approx(skm.mean_absolute_error(y_true, y_pred), rel=1e-9, abs=1e-9)
    assert got["rmse"] == pytest.approx(math.sqrt(skm.mean_squared_error(y_true, y_pred)), rel=1e-9, abs=1e-9)
    assert got["mean_error"] == pytest.approx(float(np.mean(y_pred - y_true)), rel=1e-9, abs=1e-9)
    if np.ptp(y_true) == 0:
        # A constant target: scikit-learn's definition (force_finite) is 1.0 for a perfect fit
        # and 0.0 otherwise, but its two-pass mean can leave a rounding residue that it then
        # divides by (-3.6e31 for three equal labels); we keep the definition.
        assert got["r2"] == (1.0 if np.sum((y_pred - y_true) ** 2) == 0 else 0.0)
    elif len(rows) >= 2:
        # r2 in exact rational arithmetic; scikit-learn's own (float) r2 is the oracle too where the
        # labels' spread is well above the rounding of their mean (labels a few ulps apart, [-1000.0,
        # -999.9999999999999], give it half the true total sum of squares: twice the r2 of -3.1e32).
        truths = [Fraction(t) for t, _ in rows]
        mean = sum(truths, Fraction(0)) / len(truths)
        ss_tot = sum(((t - mean) ** 2 for t in truths), Fraction(0))
        ss_res = sum(((Fraction(p) - Fraction(t)) ** 2 for t, p in rows), Fraction(0))
        assert got["r2"] == pytest.approx(float(1 - ss_res / ss_tot), rel=1e-9, abs=1e-9)
        if np.ptp(y_true) > 1e-5 * np.max(np.abs(y_true)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                expected = skm.r2_score(y_true, y_pred)
            assert got["r2"] == pytest.approx(expected, rel=1e-9, abs=1e-9)


any_double = st.floats(allow_nan=False, allow_infinity=False)


def _stats(rows: list[tuple[float, float]]) -> RegressionStats:
    stats = RegressionStats()
    for truth, guess in rows:
        stats.update(truth, guess)
    return stats


def _sums(stats: RegressionStats) -> tuple[int, ...]:
    return stats.n, stats.err_sum, stats.abs_sum, stats.sq_sum, stats.y_sum, stats.y_sq_sum


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(any_double, any_double), min_size=1, max_size=60), st.integers(1, 4), st.randoms())
def test_regression_figures_do_not_depend_on_order_batching_or_merging(
        rows: list[tuple[float, float]], parts: int, rng: Any) -> None:
    """Any doubles, from subnormals to the largest: the sums are exact, so shuffled, split into
    partials that travel as text and merge, or partly reverted, they give the same figures."""
    whole = _stats(rows)
    shuffled = rows[:]
    rng.shuffle(shuffled)
    merged = RegressionStats()
    for part in range(parts):
        merged.add(RegressionStats.parse(orjson.loads(orjson.dumps(_stats(shuffled[part::parts]).export()))))
    assert _sums(merged) == _sums(whole) and merged.get() == whole.get()
    extra = _stats(rows + shuffled[: len(rows) // 2])
    for truth, guess in shuffled[: len(rows) // 2]:
        extra.revert(truth, guess)
    assert _sums(extra) == _sums(whole)


def test_regression_figures_beyond_the_largest_double_are_infinite_not_an_error() -> None:
    got = _stats([(-1e308, 1e308), (1e308, -1e308)]).get()
    assert got["mae"] == math.inf and got["rmse"] == math.inf and got["mean_error"] == 0.0


def test_regression_partials_of_earlier_versions_still_merge() -> None:
    """Their float form: [n, error sum, absolute error sum, squared error sum, label mean, label
    sum of squared deviations]."""
    rows = [(3.0, 2.5), (-0.5, 0.0), (2.0, 2.0), (7.0, 8.0)]
    y = np.array([t for t, _ in rows])
    old = [4, -0.5 + 0.5 + 0 + 1.0, 2.0, 0.25 + 0.25 + 1.0, float(y.mean()), float(((y - y.mean()) ** 2).sum())]
    assert RegressionStats.parse(old).get() == pytest.approx(_stats(rows).get(), rel=1e-15)
    assert _stats(rows).floats() == pytest.approx(old, rel=1e-15)  # what an earlier version reads


def test_wilson_interval_brackets_the_proportion() -> None:
    low, high = wilson_interval(0.8, 200, 1.96)
    assert low < 0.8 < high
    assert (round(low, 4), round(high, 4)) == (0.7391, 0.8495)
    assert wilson_interval(0.5, 0, 1.96) == (0.0, 1.0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.one_of(st.floats(0.0, 40.0), st.floats(0.0, 1e-12),
                                                       st.sampled_from([0.5, 2.0 ** -70, 36.04365338911715]))),
                min_size=0, max_size=200))
def test_exact_sums_of_units_are_the_same_one_by_one_and_vectorised(rows: list[tuple[int, float]]) -> None:
    cells = np.array([c for c, _ in rows], dtype=np.int64)
    values = np.array([v for _, v in rows], dtype=np.float64)
    expected: dict[int, int] = {}
    for cell, value in rows:
        expected[cell] = expected.get(cell, 0) + units(value)
    assert units_by_cell(cells, values) == expected  # numpy above SMALL_UNITS values, Python below
