"""Ranking and calibration metrics from scores: ROC AUC, average precision and expected calibration
error, from per-class histograms of the scores.

Exact AUC needs every score, which a stream cannot keep. For each score class ``c`` a window
counts, in ``BINS`` bins of ``scores[c]``, the pairs whose label is ``c`` (positives) and the others
(negatives); the counts are additive, so partitions' partials merge and rolling windows revert.
Pairs in different bins are ranked exactly; a positive and a negative in the same bin count one
half, as scikit-learn counts tied scores. So the figures are exact when the scores are already on
the bins' grid (multiples of 1/1000), and otherwise off by at most the bound each record states,
computed from the histogram itself: for AUC, half of the positive-negative pairs that share a bin.

Bins are 0 alone, then right-closed ``(k/1000, (k+1)/1000]``, with every hundredth edge equal to
scikit-learn's ``calibration_curve(n_bins=10)`` edges, so the ten calibration bins are unions of
histogram bins and match scikit-learn's exactly.

>>> bins = ScoreBins()
>>> for truth, p in [("1", 0.9), ("0", 0.8), ("1", 0.7), ("0", 0.2)]:
...     bins.update(truth, {"1": p, "0": 1 - p})
>>> m = bins.get(["0", "1"], "1")
>>> m["roc_auc"], m["roc_auc_error_bound"], round(m["average_precision"], 4)
(0.75, 0.0, 0.8333)
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["BINS", "CALIBRATION_BINS", "EDGES", "ScoreBins", "default_positive", "sparse"]

GRID = 1000
BINS = GRID + 1  # {0}, then (k/1000, (k+1)/1000] for k < 1000
CALIBRATION_BINS = 10
_PER_CALIBRATION_BIN = GRID // CALIBRATION_BINS
_edges = np.linspace(0.0, 1.0, GRID + 1)
_edges[::_PER_CALIBRATION_BIN] = np.linspace(0.0, 1.0, CALIBRATION_BINS + 1)
EDGES = _edges[:-1]  # for searchsorted (side "left": right-closed bins)
_EDGE_LIST = EDGES.tolist()
CALIBRATION_OF = np.maximum(np.arange(BINS) - 1, 0) // _PER_CALIBRATION_BIN  # histogram bin -> calibration bin
_CALIBRATION_STARTS = np.searchsorted(CALIBRATION_OF, np.arange(CALIBRATION_BINS))
_CALIBRATION_LIST = CALIBRATION_OF.tolist()
POSITIVE_NAMES = ("1", "true", "yes")

Hist = npt.NDArray[np.int64]  # (classes, 2, BINS): [c, 1, k] pairs labeled c whose scores[c] is in bin k
Sums = npt.NDArray[np.float64]  # (classes, 2, CALIBRATION_BINS): the sums of those scores


def default_positive(classes: Iterable[str]) -> str:
    """The positive class of a binary model: ``1``, ``true`` or ``yes`` when present (any case), else
    the greater name, as scikit-learn takes the greater label.

    >>> default_positive(["fraud", "ok"]), default_positive(["True", "false"]), default_positive(["1", "0"])
    ('ok', 'True', '1')
    """
    names = sorted(classes)
    for name in names:
        if name.lower() in POSITIVE_NAMES:
            return name
    return names[-1]


def sparse(values: npt.NDArray[Any]) -> list[list[Any]]:
    """[flat indices, values] of the non-zero cells: how histograms travel in partials."""
    flat = values.reshape(-1)
    where = np.flatnonzero(flat)
    return [where.tolist(), flat[where].tolist()]


class ScoreBins:
    """Per score class: the histogram of positives' and negatives' scores, and their sums per
    calibration bin. ``update``/``revert`` one pair, ``add`` a batch, ``get`` the figures."""

    __slots__ = ("hist", "ids", "names", "sums")

    def __init__(self) -> None:
        self.names: list[str] = []
        self.ids: dict[str, int] = {}
        self.hist: Hist = np.zeros((0, 2, BINS), dtype=np.int64)
        self.sums: Sums = np.zeros((0, 2, CALIBRATION_BINS), dtype=np.float64)

    def _ids(self, names: Sequence[str]) -> list[int]:
        ids = [self.ids.get(name, -1) for name in names]
        if -1 in ids:
            for name in names:
                if name not in self.ids:
                    self.ids[name] = len(self.names)
                    self.names.append(name)
            grow = len(self.names) - len(self.hist)
            self.hist = np.concatenate([self.hist, np.zeros((grow, 2, BINS), dtype=np.int64)])
            self.sums = np.concatenate([self.sums, np.zeros((grow, 2, CALIBRATION_BINS))])
            ids = [self.ids[name] for name in names]
        return ids

    def update(self, truth: str, scores: dict[str, float], sign: int = 1) -> None:
        """Count one pair (label ``truth``, scores by class name)."""
        for sid, (name, p) in zip(self._ids(list(scores)), scores.items(), strict=True):
            k = bisect_left(_EDGE_LIST, p)
            positive = int(name == truth)
            self.hist[sid, positive, k] += sign
            self.sums[sid, positive, _CALIBRATION_LIST[k]] += sign * p

    def revert(self, truth: str, scores: dict[str, float]) -> None:
        self.update(truth, scores, -1)

    @staticmethod
    def count(size: int, keys: npt.NDArray[np.int64], values: npt.NDArray[np.float64]) -> tuple[Hist, Sums]:
        """A batch's histograms over ``size`` score classes: ``keys`` are ``2 * class + (label is
        that class)``, ``values`` the scores, one per (pair, score class)."""
        bins = np.searchsorted(EDGES, values)
        hist = np.bincount(keys * BINS + bins, minlength=size * 2 * BINS).reshape(size, 2, BINS)
        sums = np.bincount(keys * CALIBRATION_BINS + CALIBRATION_OF[bins], weights=values,
                           minlength=size * 2 * CALIBRATION_BINS).reshape(size, 2, CALIBRATION_BINS)
        return hist.astype(np.int64), sums.astype(np.float64)

    def add(self, names: Sequence[str], counted: tuple[Hist, Sums]) -> None:
        """Add what ``count`` made of a batch whose classes are ``names``."""
        ids = np.asarray(self._ids(names), dtype=np.int64)
        self.hist[ids] += counted[0]
        self.sums[ids] += counted[1]

    def merge(self, names: Sequence[str], hist: list[list[Any]], sums: list[list[Any]]) -> None:
        """Add another window's histograms as ``export`` gives them."""
        if not names:
            return
        other = np.zeros((len(names), 2, BINS), dtype=np.int64)
        other.reshape(-1)[hist[0]] = hist[1]
        other_sums = np.zeros((len(names), 2, CALIBRATION_BINS))
        other_sums.reshape(-1)[sums[0]] = sums[1]
        self.add(names, (other, other_sums))

    def export(self) -> dict[str, Any]:
        return {"score_classes": list(self.names), "score_hist": sparse(self.hist), "score_sums": sparse(self.sums)}

    def get(self, classes: Sequence[str], positive: str | None = None) -> dict[str, Any]:
        """The figures for a model whose labels and predictions were ``classes``: binary ones when
        the names seen are two (``positive`` or ``default_positive``), one-vs-rest macro ones when
        more. A figure whose classes lack positives or negatives is left out, as scikit-learn
        refuses it (average precision counts 0 for a class without positives, as it does)."""
        names = sorted(set(classes) | set(self.names))
        if not self.names or len(names) < 2:
            return {}
        if len(names) == 2:
            pos = positive if positive in names else default_positive(names)
            sid = self.ids.get(pos)
            if sid is None:
                return {}
            return _binary(self.hist[sid], self.sums[sid])
        return _multiclass([self.hist[self.ids[name]] if name in self.ids else None for name in names])


def _binary(hist: Hist, sums: Sums) -> dict[str, Any]:
    neg, pos = hist[0].astype(np.float64), hist[1].astype(np.float64)
    out: dict[str, Any] = {}
    auc = _auc(neg, pos)
    if auc is not None:
        out["roc_auc"], out["roc_auc_error_bound"] = auc
    ap = _average_precision(neg, pos)
    if ap is not None:
        out["average_precision"], out["average_precision_error_bound"] = ap
    out.update(_calibration(hist, sums))
    return out


def _multiclass(hists: list[Hist | None]) -> dict[str, Any]:
    if any(h is None for h in hists):
        return {}
    aucs, aps = [], []
    for hist in hists:
        assert hist is not None
        neg, pos = hist[0].astype(np.float64), hist[1].astype(np.float64)
        aucs.append(_auc(neg, pos))
        aps.append(_average_precision(neg, pos) or (0.0, 0.0))
    out: dict[str, Any] = {}
    if all(a is not None for a in aucs):
        out["roc_auc_ovr_macro"] = float(np.mean([a[0] for a in aucs if a]))
        out["roc_auc_error_bound"] = float(np.mean([a[1] for a in aucs if a]))
    out["average_precision_macro"] = float(np.mean([a[0] for a in aps]))
    out["average_precision_error_bound"] = float(np.mean([a[1] for a in aps]))
    return out


def _auc(neg: npt.NDArray[np.float64], pos: npt.NDArray[np.float64]) -> tuple[float, float] | None:
    """(AUC, bound): pairs in different bins ordered, a shared bin's pairs count 1/2 each; the
    bound is that half of the shared pairs, each of which may be either way."""
    n_pos, n_neg = float(pos.sum()), float(neg.sum())
    if n_pos == 0 or n_neg == 0:
        return None
    below = np.cumsum(neg) - neg  # negatives in lower bins
    shared = float(pos @ neg)
    return (float(pos @ below) + 0.5 * shared) / (n_pos * n_neg), 0.5 * shared / (n_pos * n_neg)


def _average_precision(neg: npt.NDArray[np.float64], pos: npt.NDArray[np.float64]) -> tuple[float, float] | None:
    """(AP, bound) with a bin's scores taken as tied (scikit-learn's rule for ties); any order of a
    bin's pairs puts each of its positives' precision between the bin's lowest and highest."""
    n_pos = float(pos.sum())
    if n_pos == 0:
        return None
    used = (pos + neg) > 0
    pos, neg = pos[used][::-1], neg[used][::-1]  # highest scores first
    tp = np.cumsum(pos)
    seen = tp + np.cumsum(neg)
    before_tp, before = tp - pos, seen - pos - neg
    ap = float(pos @ (tp / seen)) / n_pos
    highest = np.divide(before_tp + pos, before + pos, out=np.zeros_like(pos), where=pos > 0)
    lowest = (before_tp + 1) / seen
    return ap, float(pos @ np.where(pos > 0, highest - lowest, 0.0)) / n_pos


def _calibration(hist: Hist, sums: Sums) -> dict[str, Any]:
    """Expected calibration error of the positive class's score over ten equal-width bins, with
    each bin's count, mean score and fraction of positives (a reliability diagram)."""
    by_bin = np.add.reduceat(hist, _CALIBRATION_STARTS, axis=1)
    count = by_bin.sum(axis=0)
    total = int(count.sum())
    if total == 0:
        return {}
    score_sum = sums.sum(axis=0)
    bins: list[dict[str, Any]] = []
    ece = 0.0
    for k in range(CALIBRATION_BINS):
        n = int(count[k])
        if n == 0:
            bins.append({"count": 0, "mean_score": None, "fraction_positive": None})
            continue
        mean_score, fraction = float(score_sum[k]) / n, float(by_bin[1, k]) / n
        ece += n / total * abs(mean_score - fraction)
        bins.append({"count": n, "mean_score": mean_score, "fraction_positive": fraction})
    return {"ece": ece, "calibration": bins}
