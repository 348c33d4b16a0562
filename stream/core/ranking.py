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

import math
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from stream.core.metrics import UNIT, units, units_by_cell

__all__ = ["BINS", "CALIBRATION_BINS", "EDGES", "ScoreBins", "default_positive", "figures_many", "sparse"]

GRID = 1000
BINS = GRID + 1  # {0}, then (k/1000, (k+1)/1000] for k < 1000
CALIBRATION_BINS = 10
_PER_CALIBRATION_BIN = GRID // CALIBRATION_BINS
_edges = np.linspace(0.0, 1.0, GRID + 1)
_edges[::_PER_CALIBRATION_BIN] = np.linspace(0.0, 1.0, CALIBRATION_BINS + 1)
EDGES = _edges[:-1]  # for searchsorted (side "left": right-closed bins)
_EDGE_LIST = EDGES.tolist()
CALIBRATION_OF = np.maximum(np.arange(BINS) - 1, 0) // _PER_CALIBRATION_BIN  # histogram bin -> calibration bin
_CALIBRATION_LIST = CALIBRATION_OF.tolist()
POSITIVE_NAMES = ("1", "true", "yes")
PYTHON_BINS = 48  # up to this many used bins, the figures are summed in plain Python (see _ranking)
SMALL_BATCH = 16  # up to this many cells, a batch is added cell by cell (numpy's calls cost more)

Hist = npt.NDArray[np.int64]  # (classes, 2, BINS): [c, 1, k] pairs labeled c whose scores[c] is in bin k
Sums = npt.NDArray[np.object_]  # (classes, 2, CALIBRATION_BINS): the sums of those scores (metrics.units)
Batch = tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], list[int]]  # cells; sums cells and their sums (units)


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
    calibration bin, exact (``metrics.units``: Python integers), so that a window's figures do not
    depend on the order or batching of its pairs.
    ``update``/``revert`` one pair, ``add`` a batch, ``get`` the figures."""

    __slots__ = ("hist", "ids", "names", "sums")

    def __init__(self) -> None:
        self.names: list[str] = []
        self.ids: dict[str, int] = {}
        self.hist: Hist = np.zeros((0, 2, BINS), dtype=np.int64)
        self.sums: Sums = np.zeros((0, 2, CALIBRATION_BINS), dtype=object)

    def _ids(self, names: Sequence[str]) -> list[int]:
        ids = [self.ids.get(name, -1) for name in names]
        if -1 in ids:
            for name in names:
                if name not in self.ids:
                    self.ids[name] = len(self.names)
                    self.names.append(name)
            grow = len(self.names) - len(self.hist)
            self.hist = np.concatenate([self.hist, np.zeros((grow, 2, BINS), dtype=np.int64)])
            self.sums = np.concatenate([self.sums, np.zeros((grow, 2, CALIBRATION_BINS), dtype=object)])
            ids = [self.ids[name] for name in names]
        return ids

    def update(self, truth: str, scores: dict[str, float], sign: int = 1) -> None:
        """Count one pair (label ``truth``, scores by class name)."""
        for sid, (name, p) in zip(self._ids(list(scores)), scores.items(), strict=True):
            k = bisect_left(_EDGE_LIST, p)
            positive = int(name == truth)
            self.hist[sid, positive, k] += sign
            self.sums[sid, positive, _CALIBRATION_LIST[k]] += sign * units(p)

    def revert(self, truth: str, scores: dict[str, float]) -> None:
        self.update(truth, scores, -1)

    @staticmethod
    def count(keys: npt.NDArray[np.int64], values: npt.NDArray[np.float64]) -> Batch:
        """A batch's histogram cells, and its sums cells with their totals: ``keys`` are ``2 * class
        + (label is that class)``, ``values`` the scores, one per (pair, score class); classes are
        indices in the names ``add`` is given."""
        bins = np.searchsorted(EDGES, values)
        totals = units_by_cell(keys * CALIBRATION_BINS + CALIBRATION_OF[bins], values)  # once, not per window
        return keys * BINS + bins, np.fromiter(totals, dtype=np.int64, count=len(totals)), list(totals.values())

    def add(self, names: Sequence[str], batch: Batch) -> None:
        """Add what ``count`` made of a batch whose classes are ``names``."""
        hist_cells, sums_cells, values = batch
        if len(hist_cells) <= SMALL_BATCH and self.names == names:  # a window's usual fold: a few pairs
            hist, sums = self.hist.reshape(-1), self.sums.reshape(-1)
            for cell in hist_cells.tolist():
                hist[cell] += 1
            for cell, value in zip(sums_cells.tolist(), values, strict=True):
                sums[cell] += value
            return
        self._add(names, hist_cells, np.ones(len(hist_cells), dtype=np.int64), sums_cells,
                  np.array(values, dtype=object))

    def merge(self, names: Sequence[str], hist: list[list[Any]], sums: list[list[Any]],
              exact: list[list[Any]] | None = None) -> None:
        """Add another window's histograms as ``export`` gives them: the sums exact (``exact``, as
        decimal text), else in the float form earlier versions sent (rounded)."""
        if names:
            values = [int(v) for v in exact[1]] if exact is not None else [units(v) for v in sums[1]]
            self._add(names, np.asarray(hist[0], dtype=np.int64), np.asarray(hist[1], dtype=np.int64),
                      np.asarray((exact or sums)[0], dtype=np.int64), np.array(values, dtype=object))

    def _add(self, names: Sequence[str], hist_cells: npt.NDArray[np.int64], counts: npt.NDArray[np.int64],
             sums_cells: npt.NDArray[np.int64], sums: npt.NDArray[np.object_]) -> None:
        """Add cells given as flat indices over ``names`` (a window's own classes are those of its
        model, in its order, so the indices usually hold as they are)."""
        ids = self._ids(names)
        if ids != list(range(len(ids))):
            where = np.asarray(ids, dtype=np.int64)
            key, k = np.divmod(hist_cells, BINS)
            hist_cells = (where[key >> 1] * 2 + (key & 1)) * BINS + k
            key, k = np.divmod(sums_cells, CALIBRATION_BINS)
            sums_cells = (where[key >> 1] * 2 + (key & 1)) * CALIBRATION_BINS + k
        np.add.at(self.hist.reshape(-1), hist_cells, counts)
        np.add.at(self.sums.reshape(-1), sums_cells, sums)

    def export(self, packed: bool = False) -> dict[str, Any]:
        """The histograms and sums as partials carry them (``sparse``); ``packed``: for another
        process of a replay rather than for JSON, as arrays and the exact sums as integers, without
        the float form (``merge.merge_states`` reads either)."""
        if packed:
            hist, sums = self.hist.reshape(-1), self.sums.reshape(-1)
            at, where = np.flatnonzero(hist), np.flatnonzero(sums)
            return {"score_classes": list(self.names), "score_hist": [at, hist[at]], "score_sums": None,
                    "score_sums_exact": [where, sums[where].tolist()]}
        cells, values = sparse(self.sums)
        return {"score_classes": list(self.names), "score_hist": sparse(self.hist),
                "score_sums": [cells, [v / UNIT for v in values]],  # the float form earlier versions read
                "score_sums_exact": [cells, [str(v) for v in values]]}  # text: JSON integers stop at 64 bits

    def get(self, classes: Sequence[str], positive: str | None = None) -> dict[str, Any]:
        """The figures for a model whose labels and predictions were ``classes``: binary ones when
        the names seen are two (``positive`` or ``default_positive``), one-vs-rest macro ones when
        more. A figure whose classes lack positives or negatives is left out, as scikit-learn
        refuses it (average precision counts 0 for a class without positives, as it does)."""
        return figures_many([(self, classes, positive)])[0]

    def _plan(self, classes: Sequence[str], positive: str | None) -> tuple[list[Hist], Sums | None] | None:
        """The histograms ``get`` ranks: the positive class's, with its sums (binary), or every
        class's (one-vs-rest, no sums); None when there are no figures."""
        names = sorted(set(classes) | set(self.names))
        if not self.names or len(names) < 2:
            return None
        if len(names) == 2:
            sid = self.ids.get(positive if positive in names else default_positive(names))
            return None if sid is None else ([self.hist[sid]], self.sums[sid])
        if any(name not in self.ids for name in names):
            return None
        return [self.hist[self.ids[name]] for name in names], None


def figures_many(asked: Sequence[tuple[ScoreBins, Sequence[str], str | None]]) -> list[dict[str, Any]]:
    """``ScoreBins.get`` of many windows (bins, classes, positive) at once: every histogram with
    many used bins is summed in one numpy pass over all of them, where numpy's per-call cost would
    otherwise be paid per window. A window's figures do not depend on which others came with it
    (each row's sums are its own)."""
    plans = [bins._plan(classes, positive) for bins, classes, positive in asked]
    ranked = iter(_rank_all([hist for plan in plans if plan is not None for hist in plan[0]]))
    out: list[dict[str, Any]] = []
    for plan in plans:
        if plan is None:
            out.append({})
        elif plan[1] is not None:
            out.append(_binary(next(ranked), plan[1]))
        else:
            out.append(_multiclass([next(ranked) for _ in plan[0]]))
    return out


def _binary(figures: _Ranked, sums: Sums) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if figures.auc is not None:
        out["roc_auc"], out["roc_auc_error_bound"] = figures.auc
    if figures.ap is not None:
        out["average_precision"], out["average_precision_error_bound"] = figures.ap
    if figures.count:
        negatives, positives = sums.tolist()
        out.update(_calibration(figures.count, figures.positives, [a + b for a, b in zip(negatives, positives,
                                                                                          strict=True)]))
    return out


def _multiclass(ranked: list[_Ranked]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    aucs = [r.auc for r in ranked]
    if all(a is not None for a in aucs):
        out["roc_auc_ovr_macro"] = math.fsum(a[0] for a in aucs if a) / len(aucs)
        out["roc_auc_error_bound"] = math.fsum(a[1] for a in aucs if a) / len(aucs)
    aps = [r.ap or (0.0, 0.0) for r in ranked]  # no positives: 0, as scikit-learn
    out["average_precision_macro"] = math.fsum(a[0] for a in aps) / len(aps)
    out["average_precision_error_bound"] = math.fsum(a[1] for a in aps) / len(aps)
    return out


@dataclass
class _Ranked:
    auc: tuple[float, float] | None  # (value, bound)
    ap: tuple[float, float] | None
    count: list[int]  # pairs per calibration bin (when asked for)
    positives: list[int]


def _rank_all(hists: list[Hist]) -> list[_Ranked]:
    """AUC, average precision and calibration counts of each histogram, over the bins that hold
    pairs.

    AUC: pairs in different bins are ordered; a positive and a negative sharing a bin count 1/2,
    and the bound is that half of the shared pairs (each may be either way). Average precision:
    a bin's scores are taken as tied (scikit-learn's rule for ties); any order of its pairs puts
    each of its positives' precision between the bin's lowest and highest, which bounds the
    error. A histogram with few used bins (most revisions) takes one plain-Python pass, where
    numpy's per-call cost would dominate; the others take numpy's vectorised form of the same
    sums, all in one pass."""
    if not hists:
        return []
    stack = np.stack(hists)
    used = stack.sum(axis=1) != 0
    dense = np.flatnonzero(np.count_nonzero(used, axis=1) > PYTHON_BINS).tolist()
    out: list[_Ranked | None] = [None] * len(hists)
    if dense:
        for i, ranked in zip(dense, _ranking_numpy(stack[dense]), strict=True):
            out[i] = ranked
    return [ranked if ranked is not None else _ranking_python(stack[i], used[i]) for i, ranked in enumerate(out)]


def _ranking_python(hist: Hist, used: npt.NDArray[np.bool_]) -> _Ranked:
    where = np.flatnonzero(used)
    bins, negatives, positives = where.tolist(), hist[0, where].tolist(), hist[1, where].tolist()
    n_pos, n_neg = sum(positives), sum(negatives)
    auc_sum = shared = ap_sum = ap_bound = 0.0
    above_neg = tp = seen = 0
    count, positive_count = [0] * CALIBRATION_BINS, [0] * CALIBRATION_BINS
    calibration_of = _CALIBRATION_LIST
    for i in range(len(bins) - 1, -1, -1):
        n, p = negatives[i], positives[i]
        if p:
            auc_sum += p * (n_neg - above_neg - n)
            shared += p * n
            before_tp, before = tp, seen
            tp += p
            seen += p + n
            ap_sum += p * tp / seen
            ap_bound += p * ((before_tp + p) / (before + p) - (before_tp + 1) / seen)
        else:
            seen += n
        above_neg += n
        c = calibration_of[bins[i]]
        count[c] += n + p
        positive_count[c] += p
    return _ranked(n_pos, n_neg, auc_sum, shared, ap_sum, ap_bound, count, positive_count)


def _ranking_numpy(hists: Hist) -> list[_Ranked]:
    """The sums of ``_ranking_python`` for histograms stacked as (n, 2, BINS), over all bins at once
    (an unused bin adds 0), in integers where they are counts; divisors are kept at least 1 where
    the term they divide is 0. Each row is summed on its own, as it would be alone."""
    top = hists[:, :, ::-1]  # highest scores first
    neg, pos = top[:, 0], top[:, 1]
    cum = top.cumsum(axis=2)
    neg_cum, tp = cum[:, 0], cum[:, 1]  # negatives and positives at or above each bin
    n_neg = neg_cum[:, -1:]
    seen = neg_cum + tp
    seen_1 = np.maximum(seen, 1)
    ap_sum = (pos * (tp / seen_1)).sum(axis=1)
    ap_bound = (pos * (tp / np.maximum(seen - neg, 1) - (tp - pos + 1) / seen_1)).sum(axis=1)
    auc_sum, shared = (pos * (n_neg - neg_cum)).sum(axis=1), (pos * neg).sum(axis=1)
    per_bin = hists[:, :, 1:].reshape(len(hists), 2, CALIBRATION_BINS, _PER_CALIBRATION_BIN).sum(axis=3)
    per_bin[:, :, 0] += hists[:, :, 0]
    count, positive_count = (per_bin[:, 0] + per_bin[:, 1]).tolist(), per_bin[:, 1].tolist()
    return [_ranked(*row) for row in zip(tp[:, -1].tolist(), n_neg[:, 0].tolist(), auc_sum.tolist(), shared.tolist(),
                                         ap_sum.tolist(), ap_bound.tolist(), count, positive_count, strict=True)]


def _ranked(n_pos: float, n_neg: float, auc_sum: float, shared: float, ap_sum: float, ap_bound: float,
            count: list[int], positive_count: list[int]) -> _Ranked:
    pairs = n_pos * n_neg
    auc = ((auc_sum + 0.5 * shared) / pairs, 0.5 * shared / pairs) if pairs else None
    ap = (ap_sum / n_pos, ap_bound / n_pos) if n_pos else None
    return _Ranked(auc, ap, count, positive_count)


def _calibration(count: list[int], positives: list[int], score_sums: list[int]) -> dict[str, Any]:
    """Expected calibration error of the positive class's score over ten equal-width bins, with
    each bin's count, mean score and fraction of positives (a reliability diagram); ``score_sums``
    in ``metrics.units``."""
    total = sum(count)
    bins: list[dict[str, Any]] = []
    ece = 0.0
    for n, positive, score_sum in zip(count, positives, score_sums, strict=True):
        if n == 0:
            bins.append({"count": 0, "mean_score": None, "fraction_positive": None})
            continue
        mean_score, fraction = score_sum / (UNIT * n), positive / n
        ece += n / total * abs(mean_score - fraction)
        bins.append({"count": n, "mean_score": mean_score, "fraction_positive": fraction})
    return {"ece": ece, "calibration": bins}
