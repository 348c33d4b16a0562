"""Exact metrics from additive state, equal to scikit-learn (``zero_division=0``) to 1e-9.

Classification figures come from one confusion matrix; probabilistic ones (log loss, Brier)
and regression ones from running sums that also support ``revert`` for rolling windows.

>>> import numpy as np
>>> m = classification(np.array([[3, 1], [0, 4]]), ["no", "yes"])
>>> round(m["accuracy"], 3), round(m["f1_macro"], 3), m["support"]
(0.875, 0.873, {'no': 4, 'yes': 4})
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from math import log
from typing import Any

import numpy as np
import numpy.typing as npt

from stream.core.codes import unique_ints

__all__ = ["EPS", "ONE_MINUS_EPS", "PROPORTIONS", "UNIT", "RegressionStats", "ScoreSums", "classification", "exact",
           "units", "units_by_cell", "wilson_interval"]

EPS = float(np.finfo(np.float64).eps)
ONE_MINUS_EPS = 1.0 - EPS

# Metrics that are proportions of pairs: the statistical gate may use a Wilson bound on them.
PROPORTIONS = frozenset({
    "accuracy", "balanced_accuracy", "precision_macro", "precision_micro", "precision_weighted",
    "recall_macro", "recall_micro", "recall_weighted", "f1_macro", "f1_micro", "f1_weighted",
})


def _ratio(num: npt.NDArray[np.float64], den: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """num / den, with 0 where den is 0 (scikit-learn's zero_division=0)."""
    out = np.zeros_like(num, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


SMALL_MATRIX = 4  # classes up to which plain Python is faster than numpy's per-call cost


def classification(counts: npt.NDArray[np.int64], classes: list[str]) -> dict[str, Any]:
    """All classification metrics of one matrix (rows actual, columns predicted)."""
    if len(classes) <= SMALL_MATRIX:
        return _small(counts.tolist(), classes)
    cells = counts.astype(np.float64)
    n = float(cells.sum())
    if n == 0:
        return {}
    tp = np.diag(cells)
    actual = cells.sum(axis=1)
    predicted = cells.sum(axis=0)
    precision = _ratio(tp, predicted)
    recall = _ratio(tp, actual)
    f1 = _ratio(2 * tp, actual + predicted)
    weights = actual / n
    correct = float(tp.sum())
    accuracy = correct / n
    has_support = actual > 0
    out: dict[str, Any] = {
        "accuracy": accuracy,
        "balanced_accuracy": float(recall[has_support].mean()),
        "precision_macro": float(precision.mean()),
        "recall_macro": float(recall.mean()),
        "f1_macro": float(f1.mean()),
        "precision_micro": accuracy,
        "recall_micro": accuracy,
        "f1_micro": accuracy,
        "precision_weighted": float(precision @ weights),
        "recall_weighted": float(recall @ weights),
        "f1_weighted": float(f1 @ weights),
        "mcc": _mcc(correct, n, actual, predicted),
        "cohen_kappa": _kappa(cells, actual, predicted, n),
        "precision": dict(zip(classes, precision.tolist(), strict=True)),
        "recall": dict(zip(classes, recall.tolist(), strict=True)),
        "f1": dict(zip(classes, f1.tolist(), strict=True)),
        "support": dict(zip(classes, actual.astype(np.int64).tolist(), strict=True)),
    }
    return out


def _small(cells: list[list[int]], classes: list[str]) -> dict[str, Any]:
    """``classification`` in plain Python, for the small matrices most models have: the same
    formulas, summed in Python rather than by numpy."""
    k = len(cells)
    actual = [sum(row) for row in cells]
    n = sum(actual)
    if n == 0:
        return {}
    predicted = [sum(column) for column in zip(*cells, strict=True)]
    precision, recall, f1, supported = [], [], [], []
    correct = 0
    for i in range(k):
        t, a, p = cells[i][i], actual[i], predicted[i]
        correct += t
        precision.append(t / p if p else 0.0)
        recall.append(t / a if a else 0.0)
        if a > 0:
            supported.append(recall[i])
        f1.append(2 * t / (a + p) if a + p else 0.0)
    accuracy = correct / n
    n2 = float(n) * n
    chance_sum = sum(a * p for a, p in zip(actual, predicted, strict=True))
    cov_tp = float(correct) * n - chance_sum
    cov_pp = n2 - sum(p * p for p in predicted)
    cov_tt = n2 - sum(a * a for a in actual)
    expected_off = (n2 - chance_sum) / n  # the off-diagonal sum of outer(actual, predicted) / n
    return {
        "accuracy": accuracy,
        "balanced_accuracy": sum(supported) / len(supported),
        "precision_macro": sum(precision) / k,
        "recall_macro": sum(recall) / k,
        "f1_macro": sum(f1) / k,
        "precision_micro": accuracy,
        "recall_micro": accuracy,
        "f1_micro": accuracy,
        "precision_weighted": sum(x * a for x, a in zip(precision, actual, strict=True)) / n,
        "recall_weighted": sum(x * a for x, a in zip(recall, actual, strict=True)) / n,
        "f1_weighted": sum(x * a for x, a in zip(f1, actual, strict=True)) / n,
        "mcc": 0.0 if cov_pp * cov_tt == 0 else cov_tp / math.sqrt(cov_tt * cov_pp),
        "cohen_kappa": None if expected_off == 0 else 1.0 - (n - correct) / expected_off,
        "precision": dict(zip(classes, precision, strict=True)),
        "recall": dict(zip(classes, recall, strict=True)),
        "f1": dict(zip(classes, f1, strict=True)),
        "support": dict(zip(classes, actual, strict=True)),
    }


def _mcc(correct: float, n: float, actual: npt.NDArray[np.float64], predicted: npt.NDArray[np.float64]) -> float:
    cov_tp = correct * n - float(actual @ predicted)
    cov_pp = n * n - float(predicted @ predicted)
    cov_tt = n * n - float(actual @ actual)
    if cov_pp * cov_tt == 0:
        return 0.0
    return cov_tp / math.sqrt(cov_tt * cov_pp)


def _kappa(
    cells: npt.NDArray[np.float64], actual: npt.NDArray[np.float64], predicted: npt.NDArray[np.float64], n: float
) -> float | None:
    """Cohen's kappa; None where scikit-learn gives NaN (one class only: chance agreement is total)."""
    expected = np.outer(actual, predicted) / n
    off_diagonal = ~np.eye(len(cells), dtype=bool)
    disagreement_expected = float(expected[off_diagonal].sum())
    if disagreement_expected == 0:
        return None
    return 1.0 - float(cells[off_diagonal].sum()) / disagreement_expected


UNIT = 1 << 64  # score sums count in units of 2**-64, as Python integers


def units(value: float) -> int:
    """A term of a score sum as a whole number of 2**-64 (exact for terms from 2**-11 up, else
    rounded by 2**-65). Integers add exactly, so a sum does not depend on the order or batching of
    its pairs, a rolling window's revert gives back exactly what its update added, and a mean is
    the correctly rounded quotient of two integers.

    >>> units(0.5) == UNIT // 2, units(0.1) / UNIT == 0.1
    (True, True)
    """
    return round(value * UNIT)


SMALL_UNITS = 32  # values up to which ``units_by_cell`` converts them one by one in Python
_CHUNK = 1 << 24  # values per numpy pass: with |value| < _NUMPY_BELOW, their int64 part sums cannot overflow
_NUMPY_BELOW = 64.0  # 2**24 values times 2**32 * 64 < 2**63 (log loss is at most 36, Brier and scores smaller)


def units_by_cell(cells: npt.NDArray[np.int64], values: npt.NDArray[np.float64]) -> dict[int, int]:
    """The sum of ``units(value)`` per cell, exactly. A large batch is summed by numpy: each value
    times 2**64 (exact) is split into a multiple of 2**32 and the rest, both exact, whose int64
    sums are joined as Python integers (the rest rounds as ``units`` rounds: half to even).

    >>> values = np.array([0.1, 0.2, 0.3] * 20)
    >>> units_by_cell(np.zeros(60, dtype=np.int64), values) == {0: sum(units(v) for v in values.tolist())}
    True
    """
    totals: dict[int, int] = {}
    if len(values) <= SMALL_UNITS or not float(np.abs(values).max()) < _NUMPY_BELOW:
        for cell, value in zip(cells.tolist(), values.tolist(), strict=True):
            totals[cell] = totals.get(cell, 0) + units(value)
        return totals
    for start in range(0, len(values), _CHUNK):
        scaled = values[start:start + _CHUNK] * float(UNIT)
        high = np.floor(scaled * 2.0 ** -32)
        low = np.rint(scaled - high * 2.0 ** 32).astype(np.int64)
        used, where = unique_ints(cells[start:start + _CHUNK], return_inverse=True)
        high_sums, low_sums = np.zeros(len(used), dtype=np.int64), np.zeros(len(used), dtype=np.int64)
        np.add.at(high_sums, where, high.astype(np.int64))
        np.add.at(low_sums, where, low)
        for cell, h, lo in zip(used.tolist(), high_sums.tolist(), low_sums.tolist(), strict=True):
            totals[cell] = totals.get(cell, 0) + (h << 32) + lo
    return totals


class ScoreSums:
    """Log loss and Brier score over the pairs that carried ``scores``, from exact sums (``units``).

    >>> s = ScoreSums()
    >>> s.update("a", {"a": 0.8, "b": 0.2}); s.update("b", {"a": 0.3, "b": 0.7})
    >>> round(s.get()["log_loss"], 4), round(s.get()["brier"], 4)
    (0.2899, 0.065)
    """

    __slots__ = ("brier_units", "log_loss_units", "n")

    def __init__(self) -> None:
        self.n = 0
        self.log_loss_units = 0  # the sums, in units of 2**-64 (see ``units``)
        self.brier_units = 0

    @staticmethod
    def terms(y_true: str, names: Sequence[Any], probs: Sequence[float]) -> tuple[float, float]:
        """One pair's (log loss, Brier) terms from the scores' class names and probabilities;
        binary Brier is halved as scikit-learn does."""
        brier = 0.0
        p_true = None
        for name, p in zip(names, probs, strict=True):
            if name == y_true:
                p_true = p
                p -= 1.0
            brier += p * p
        if p_true is None:
            p_true, brier = 0.0, brier + 1.0
        if len(probs) == 2:
            brier /= 2
        return -log(EPS if p_true < EPS else ONE_MINUS_EPS if p_true > ONE_MINUS_EPS else p_true), brier

    @property
    def log_loss_sum(self) -> float:
        return self.log_loss_units / UNIT

    @property
    def brier_sum(self) -> float:
        return self.brier_units / UNIT

    def update(self, y_true: str, scores: dict[str, float], sign: int = 1) -> None:
        log_loss, brier = self.terms(y_true, tuple(scores), tuple(scores.values()))
        self.n += sign
        self.log_loss_units += sign * units(log_loss)
        self.brier_units += sign * units(brier)

    def revert(self, y_true: str, scores: dict[str, float]) -> None:
        self.update(y_true, scores, -1)

    def merge(self, n: int, log_loss_sum: float, brier_sum: float) -> None:
        """Add sums gathered elsewhere (another partition's window, a rolling window's pair)."""
        self.add_units(n, units(log_loss_sum), units(brier_sum))

    def add_units(self, n: int, log_loss_units: int, brier_units: int) -> None:
        self.n += n
        self.log_loss_units += log_loss_units
        self.brier_units += brier_units

    def get(self) -> dict[str, float]:
        if self.n <= 0:
            return {}
        scale = UNIT * self.n
        return {"log_loss": self.log_loss_units / scale, "brier": self.brier_units / scale}


class RegressionStats:
    """MAE, RMSE, R² and mean error (prediction - label) from exact sums.

    A finite double is a whole number of 2^-k for some k (at most 1074), so the sums of errors,
    absolute errors and labels are kept as Python integers in 2^-k, and the sums of their squares
    in 2^-2k, where k is the finest that the pairs so far need (``scale_bits``; the sums are
    shifted when a finer one comes). Integers add and subtract exactly: the figures do not depend
    on the order or batching of the pairs, partitions' partials merge exactly, a rolling window's
    ``revert`` is exact, and each figure is the correctly rounded quotient of two integers (R²
    before its ``1 -``, RMSE before its square root).

    >>> r = RegressionStats()
    >>> for label, pred in [(3.0, 2.5), (-0.5, 0.0), (2.0, 2.0), (7.0, 8.0)]:
    ...     r.update(label, pred)
    >>> {k: round(v, 4) for k, v in r.get().items()}
    {'mae': 0.5, 'rmse': 0.6124, 'r2': 0.9486, 'mean_error': 0.25}
    >>> r.scale_bits, r.err_sum  # in halves: 0.25 * 4 pairs = 2 halves
    (1, 2)
    """

    __slots__ = ("abs_sum", "err_sum", "n", "scale_bits", "sq_sum", "y_sq_sum", "y_sum")

    def __init__(self) -> None:
        self.n = self.scale_bits = 0
        self.err_sum = self.abs_sum = self.y_sum = 0  # in 2^-scale_bits
        self.sq_sum = self.y_sq_sum = 0  # in 2^-(2 scale_bits)

    def update(self, y_true: float, y_pred: float, sign: int = 1) -> None:
        y_num, y_den = y_true.as_integer_ratio()  # denominators are powers of two
        p_num, p_den = y_pred.as_integer_ratio()
        bits = max(y_den, p_den).bit_length() - 1
        if bits > self.scale_bits:
            self._rescale(bits)
        bits = self.scale_bits + 1
        y = y_num << (bits - y_den.bit_length())
        err = (p_num << (bits - p_den.bit_length())) - y
        self.n += sign
        self.err_sum += sign * err
        self.abs_sum += sign * abs(err)
        self.sq_sum += sign * err * err
        self.y_sum += sign * y
        self.y_sq_sum += sign * y * y

    def revert(self, y_true: float, y_pred: float) -> None:
        self.update(y_true, y_pred, -1)

    def add(self, other: RegressionStats) -> None:
        if other.scale_bits > self.scale_bits:
            self._rescale(other.scale_bits)
        shift = self.scale_bits - other.scale_bits
        self.n += other.n
        self.err_sum += other.err_sum << shift
        self.abs_sum += other.abs_sum << shift
        self.y_sum += other.y_sum << shift
        self.sq_sum += other.sq_sum << 2 * shift
        self.y_sq_sum += other.y_sq_sum << 2 * shift

    def _rescale(self, bits: int) -> None:
        shift = bits - self.scale_bits
        self.err_sum, self.abs_sum, self.y_sum = self.err_sum << shift, self.abs_sum << shift, self.y_sum << shift
        self.sq_sum, self.y_sq_sum = self.sq_sum << 2 * shift, self.y_sq_sum << 2 * shift
        self.scale_bits = bits

    def export(self) -> list[Any]:
        """[n, scale_bits, then each sum as decimal text]: JSON integers stop at 64 bits."""
        sums = (self.err_sum, self.abs_sum, self.sq_sum, self.y_sum, self.y_sq_sum)
        return [self.n, self.scale_bits, *(str(v) for v in sums)]

    def floats(self) -> list[float]:
        """The float form that earlier versions exported and read: [n, error sum, absolute error
        sum, squared error sum, label mean, label sum of squared deviations]."""
        n, bits = self.n, self.scale_bits
        if n <= 0:
            return [0, 0.0, 0.0, 0.0, 0.0, 0.0]
        ss_y_n = n * self.y_sq_sum - self.y_sum * self.y_sum
        return [n, _quotient(self.err_sum, 1 << bits), _quotient(self.abs_sum, 1 << bits),
                _quotient(self.sq_sum, 1 << 2 * bits), _quotient(self.y_sum, n << bits),
                _quotient(ss_y_n, n << 2 * bits)]

    @classmethod
    def parse(cls, exported: list[Any]) -> RegressionStats:
        """What ``export`` wrote; or the float form of earlier versions, [n, error sum, absolute
        error sum, squared error sum, label mean, label sum of squared deviations], converted
        (exact for the error sums; the labels' from their rounded mean)."""
        stats = cls()
        if len(exported) == 7:
            stats.n, stats.scale_bits = int(exported[0]), int(exported[1])
            stats.err_sum, stats.abs_sum, stats.sq_sum, stats.y_sum, stats.y_sq_sum = (int(v) for v in exported[2:])
            return stats
        n, err, abs_err, sq, mean_y, ss_y = (float(v) for v in exported)
        stats._rescale(_EXACT_BITS)
        stats.n = int(n)
        mean = exact(mean_y)
        stats.err_sum, stats.abs_sum, stats.sq_sum = exact(err), exact(abs_err), exact(sq) << _EXACT_BITS
        stats.y_sum, stats.y_sq_sum = mean * stats.n, (exact(ss_y) << _EXACT_BITS) + stats.n * mean * mean
        return stats

    def get(self) -> dict[str, float]:
        n = self.n
        if n <= 0:
            return {}
        ss_y_n = n * self.y_sq_sum - self.y_sum * self.y_sum  # n Σ(y - ȳ)², in 2^-(2 scale_bits)
        if self.sq_sum == 0:  # scikit-learn's force_finite: a perfect fit is 1, a constant target 0
            r2 = 1.0
        elif ss_y_n == 0:
            r2 = 0.0
        else:
            r2 = 1.0 - _quotient(n * self.sq_sum, ss_y_n)
        bits = self.scale_bits
        return {
            "mae": _quotient(self.abs_sum, n << bits),
            "rmse": math.sqrt(_quotient(self.sq_sum, n << 2 * bits)),
            "r2": r2,
            "mean_error": _quotient(self.err_sum, n << bits),
        }


_EXACT_BITS = 1074  # every finite double is a whole number of 2^-1074


def exact(x: float) -> int:
    """A finite double as a whole number of 2^-1074.

    >>> exact(0.5) == 1 << 1073, exact(-3.0) == -3 << 1074, exact(5e-324)
    (True, True, 1)
    """
    numerator, denominator = x.as_integer_ratio()
    return numerator << (_EXACT_BITS + 1 - denominator.bit_length())


def _quotient(a: int, b: int) -> float:
    """a / b correctly rounded; beyond the largest double, infinite (a record shows it as null)."""
    try:
        return a / b
    except OverflowError:
        return math.inf if (a > 0) == (b > 0) else -math.inf


def wilson_interval(p: float, n: int, z: float) -> tuple[float, float]:
    """Wilson score interval of a proportion p observed over n trials.

    >>> lo, hi = wilson_interval(0.5, 100, 1.96)
    >>> round(lo, 3), round(hi, 3)
    (0.404, 0.596)
    """
    if n <= 0:
        return 0.0, 1.0
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)
