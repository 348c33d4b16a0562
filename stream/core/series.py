"""The engine's window model: a series (model, version, segment), its windows, and the window sets
that fold buffered pairs into every window at once."""

from __future__ import annotations

import heapq
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stream.core.confusion import ClassIndex, ConfusionMatrix, count_codes
from stream.core.custom import MetricBook
from stream.core.keys import segment_label
from stream.core.merge import Figures, WindowState, record_figures_many
from stream.core.metrics import RegressionStats, ScoreSums, units_by_cell
from stream.core.ranking import ScoreBins
from stream.core.windows import WindowSpec

__all__ = ["Model", "RollingWindow", "Series", "Terms", "Window", "WindowSet", "refresh_figures"]


class Window:
    """Additive state of one window instance: predictions seen, pairs' matrix or regression sums."""

    __slots__ = ("bins", "changed", "cm", "dirty", "figures", "predictions", "regression", "scores", "series", "spec",
                 "start")

    def __init__(self, series: Series, spec: WindowSpec, start: int, classes: ClassIndex | None) -> None:
        self.series = series
        self.spec = spec
        self.start = start
        self.predictions = 0
        self.cm = ConfusionMatrix(classes) if classes is not None else None
        self.regression = RegressionStats() if classes is None else None
        self.scores = ScoreSums()
        self.bins = ScoreBins() if classes is not None else None
        self.dirty = False
        self.changed = True  # its pairs changed since ``figures`` were computed
        self.figures: Figures | None = None  # the figures of its last record (see merge.record_figures)

    def state(self) -> WindowState:
        if self.cm is None:
            return WindowState(self.predictions, [], np.zeros((0, 0), dtype=np.int64), self.scores, self.regression)
        return WindowState(self.predictions, *self.cm.table(), self.scores, None, self.bins)

    def partial(self, final: bool, packed: bool = False) -> dict[str, Any]:
        """Its additive state as a Kafka worker's partition sends it to the merger (core.merge);
        ``packed``: as a replay's share sends it to the merge (``WindowState.export``)."""
        series = self.series
        return {"model": series.model, "model_version": series.model_version, "segment": series.segment,
                "window": self.spec.describe(self.start), "final": final, **self.state().export(packed)}


def refresh_figures(windows: Iterable[Window], book: MetricBook | None) -> None:
    """Compute the figures of the windows whose pairs changed since their last record, all together
    (``merge.record_figures_many``); the others keep theirs."""
    stale = [window for window in windows if window.changed or window.figures is None]
    for window, figures in zip(stale, record_figures_many([(w.series.model, w.state()) for w in stale], book),
                               strict=True):
        window.figures, window.changed = figures, False


Terms = tuple[float, float, dict[str, float]] | None  # a scored pair's (log loss, Brier) terms and scores


class RollingWindow(Window):
    """The last ``size_n`` pairs of a series in completion order: by the later of the prediction's
    and the label's timestamps, ties by request id (river's Rolling over a matrix). Kept as a heap
    of those keys, so pairs may come in any order (from several partitions, or again after a
    rebuild) and a pair pushed twice counts once; the Kafka worker merges partitions' windows
    exactly, since the last ``size_n`` of all are among the last ``size_n`` of each."""

    __slots__ = ("keys", "pairs", "size_n")

    def __init__(self, series: Series, spec: WindowSpec, classes: ClassIndex | None) -> None:
        super().__init__(series, spec, 0, classes)
        self.size_n = spec.size_n
        self.pairs: list[tuple[float, str, Any, Any, Terms]] = []  # a heap: the oldest first
        self.keys: set[tuple[float, str]] = set()

    def push(self, done_ts: float, request_id: str, truth: Any, guess: Any, terms: Terms) -> bool:
        """Count a pair completed at ``done_ts``, unless counted already or older than all kept."""
        key = (done_ts, request_id)
        if key in self.keys or (len(self.pairs) >= self.size_n and key < self.pairs[0][:2]):
            return False
        heapq.heappush(self.pairs, (done_ts, request_id, truth, guess, terms))
        self.keys.add(key)
        self.changed = True
        self._add(truth, guess, terms, 1)
        if len(self.pairs) > self.size_n:
            oldest = heapq.heappop(self.pairs)
            self.keys.discard(oldest[:2])
            self._add(oldest[2], oldest[3], oldest[4], -1)
        return True

    def remove(self, done_ts: float, request_id: str) -> bool:
        """Take a pair out again (a duplicate won over its label or prediction); False if it is not
        kept. A pair that was pushed out to make room for it does not come back: the window holds
        one pair fewer until the next one comes."""
        key = (done_ts, request_id)
        if key not in self.keys:
            return False
        self.keys.discard(key)
        for i, pair in enumerate(self.pairs):
            if pair[:2] == key:
                self.pairs[i] = self.pairs[-1]
                self.pairs.pop()
                heapq.heapify(self.pairs)
                self.changed = True
                self._add(pair[2], pair[3], pair[4], -1)
                return True
        return False  # pragma: no cover - keys and pairs hold the same pairs

    def _add(self, truth: Any, guess: Any, terms: Terms, sign: int) -> None:
        if self.cm is None:
            self.regression.update(truth, guess, sign)  # type: ignore[union-attr]  # exact: reverts exactly
            return
        self.cm.add(truth, guess, sign)
        if terms is not None:
            self.scores.merge(sign, sign * terms[0], sign * terms[1])
            self.bins.update(self.cm.index.names[truth], terms[2], sign)  # type: ignore[union-attr]

    def partial(self, final: bool, packed: bool = False) -> dict[str, Any]:
        return {**super().partial(final, packed), "pairs": self.export_pairs()}

    def export_pairs(self) -> list[list[Any]]:
        """The pairs, classes by name, for the merger: [done_ts, request_id, truth, guess, log loss
        term or None, Brier term or None, scores or None]."""
        names = self.cm.index.names if self.cm is not None else None
        out = []
        for done_ts, rid, truth, guess, terms in self.pairs:
            if names is not None:
                truth, guess = names[truth], names[guess]
            out.append([done_ts, rid, truth, guess, *(terms or (None, None, None))])
        return out


class Series:
    """One (model, version, segment): its live windows and its rolling windows."""

    __slots__ = ("detectors", "model", "model_version", "rolling", "segment", "segment_key", "windows")

    def __init__(self, model: str, version: str, segment: dict[str, str]) -> None:
        self.model = model
        self.model_version = version
        self.segment = segment
        self.segment_key = segment_label(segment)
        self.windows: dict[tuple[WindowSpec, int], Window] = {}
        self.rolling: list[RollingWindow] = []
        self.detectors: list[tuple[Any, int]] = []  # its detector rules (see core.detector_book.DetectorBook.watch)


@dataclass
class Model:
    name: str
    regression: bool
    classes: ClassIndex | None
    number: int = 0  # in the order the engine met its models: the join's model (see JoinBuffer)
    score_classes: ClassIndex = field(default_factory=ClassIndex)  # the names its scores carried


class WindowSet:
    """Every timed window that predictions of one group (model, version, segment values) and one
    time slot fall in. Pairs are buffered here once and folded into all its windows before any
    emission, so a pair costs the same however many windows and segments are configured. A
    window's figures do not depend on how its pairs were batched into folds (its counts and sums
    add exactly), so a fold may come at any time."""

    __slots__ = ("codes", "dirty", "final_from", "group", "model", "number", "predictions", "score_keys",
                 "score_values", "scored", "targets", "terms", "windows")

    def __init__(self, model: Model, group: tuple[Series, ...], windows: tuple[Window, ...], number: int,
                 final_from: float = float("inf")) -> None:
        self.number = number  # what a pending prediction stores to find it again
        self.final_from = final_from  # the watermark from which one of its windows may be final
        self.model = model
        self.group = group
        self.windows = windows
        self.codes = array("q")
        self.targets = RegressionStats() if model.classes is None else None  # a regression model's pairs
        self.predictions = self.scored = 0
        self.terms = array("d")  # per scored pair: its log loss and Brier terms
        self.score_keys = array("q")  # per scored pair and score class: 2 * class + (label is that class)
        self.score_values = array("d")  # and the score
        self.dirty = False

    def add_scores(self, truth: str, names: tuple[str, ...], probs: tuple[float, ...]) -> tuple[float, float]:
        """Buffer a scored pair's log loss and Brier terms (returned) and its scores for the score
        histograms (see ``ScoreBins.count``)."""
        log_loss, brier = ScoreSums.terms(truth, names, probs)
        self.scored += 1
        self.terms.append(log_loss)
        self.terms.append(brier)
        index = self.model.score_classes
        keys, values = self.score_keys, self.score_values
        for name, p in zip(names, probs, strict=True):
            sid = index.ids.get(name)
            keys.append(2 * (index.id(name) if sid is None else sid) + (name == truth))
            values.append(p)
        return log_loss, brier

    def fold(self) -> list[Window]:
        """Move the buffered counts into every window; returns the windows it changed."""
        windows = self.windows
        if self.predictions:
            for window in windows:
                window.predictions += self.predictions
        if self.codes:
            classes = self.model.classes
            assert classes is not None
            counts = count_codes(np.frombuffer(self.codes, dtype=np.int64), len(classes))
            for window in windows:
                window.cm.merge(counts, len(self.codes))  # type: ignore[union-attr]
                window.changed = True
            self.codes = array("q")
        if self.scored:
            names = self.model.score_classes.names
            counted = ScoreBins.count(np.frombuffer(self.score_keys, dtype=np.int64),
                                      np.frombuffer(self.score_values, dtype=np.float64))
            totals = units_by_cell(np.arange(len(self.terms)) & 1, np.frombuffer(self.terms, dtype=np.float64))
            log_loss_units, brier_units = totals.get(0, 0), totals.get(1, 0)  # exact sums (see metrics.units)
            for window in windows:
                window.scores.add_units(self.scored, log_loss_units, brier_units)
                window.bins.add(names, counted)  # type: ignore[union-attr]
            self.score_keys, self.score_values, self.terms = array("q"), array("d"), array("d")
        if self.targets is not None and self.targets.n:
            for window in windows:
                window.regression.add(self.targets)  # type: ignore[union-attr]
                window.changed = True
            self.targets = RegressionStats()
        self.predictions = self.scored = 0
        self.dirty = False
        return list(windows)
