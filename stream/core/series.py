"""The engine's window model: a series (model, version, segment), its windows, and the window sets
that fold buffered pairs into every window at once."""

from __future__ import annotations

from array import array
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stream.core.confusion import ClassIndex, ConfusionMatrix, count_codes
from stream.core.keys import segment_label
from stream.core.merge import WindowState
from stream.core.metrics import RegressionStats, ScoreSums
from stream.core.windows import WindowSpec

__all__ = ["Model", "RollingWindow", "Series", "Terms", "Window", "WindowSet"]


class Window:
    """Additive state of one window instance: predictions seen, pairs' matrix or regression sums."""

    __slots__ = ("cm", "dirty", "predictions", "regression", "scores", "series", "spec", "start")

    def __init__(self, series: Series, spec: WindowSpec, start: int, classes: ClassIndex | None) -> None:
        self.series = series
        self.spec = spec
        self.start = start
        self.predictions = 0
        self.cm = ConfusionMatrix(classes) if classes is not None else None
        self.regression = RegressionStats() if classes is None else None
        self.scores = ScoreSums()
        self.dirty = False

    def state(self) -> WindowState:
        if self.cm is None:
            return WindowState(self.predictions, [], np.zeros((0, 0), dtype=np.int64), self.scores, self.regression)
        return WindowState(self.predictions, self.cm.classes(), self.cm.counts(), self.scores, None)


Terms = tuple[float, float] | None  # one pair's (log loss, Brier) terms, when it carried scores


class RollingWindow(Window):
    """The last ``size_n`` pairs of a series, in join order (river's Rolling over a matrix)."""

    __slots__ = ("pairs", "size_n")

    def __init__(self, series: Series, spec: WindowSpec, classes: ClassIndex | None) -> None:
        super().__init__(series, spec, 0, classes)
        self.size_n = spec.size_n
        self.pairs: deque[tuple[Any, Any, Terms]] = deque()

    def push(self, truth: Any, guess: Any, terms: Terms) -> None:
        self._add(truth, guess, terms, 1)
        self.pairs.append((truth, guess, terms))
        if len(self.pairs) > self.size_n:
            self._add(*self.pairs.popleft(), -1)

    def _add(self, truth: Any, guess: Any, terms: Terms, sign: int) -> None:
        if self.cm is None:
            return  # float sums do not revert exactly: figures() rebuilds them from the pairs
        self.cm.add(truth, guess, sign)
        if terms is not None:
            self.scores.merge(sign, sign * terms[0], sign * terms[1])

    def state(self) -> WindowState:
        if self.cm is None:
            self.regression = RegressionStats()
            for truth, guess, _ in self.pairs:
                self.regression.update(truth, guess)
        return super().state()


class Series:
    """One (model, version, segment): its live windows and its rolling windows."""

    __slots__ = ("model", "model_version", "rolling", "segment", "segment_key", "windows")

    def __init__(self, model: str, version: str, segment: dict[str, str]) -> None:
        self.model = model
        self.model_version = version
        self.segment = segment
        self.segment_key = segment_label(segment)
        self.windows: dict[tuple[WindowSpec, int], Window] = {}
        self.rolling: list[RollingWindow] = []


@dataclass
class Model:
    name: str
    regression: bool
    classes: ClassIndex | None
    segment_values: dict[str, set[str]] = field(default_factory=dict)


class WindowSet:
    """Every timed window that predictions of one group (model, version, segment values) and one
    time slot fall in. Pairs are buffered here once and folded into all its windows before any
    emission, so a pair costs the same however many windows and segments are configured."""

    __slots__ = ("brier_sum", "codes", "dirty", "group", "log_loss_sum", "model", "number", "predictions",
                 "scored", "targets", "windows")

    def __init__(self, model: Model, group: tuple[Series, ...], windows: tuple[Window, ...], number: int) -> None:
        self.number = number  # what a pending prediction stores to find it again
        self.model = model
        self.group = group
        self.windows = windows
        self.codes = array("q")
        self.targets: list[tuple[float, float]] = []
        self.predictions = self.scored = 0
        self.log_loss_sum = self.brier_sum = 0.0
        self.dirty = False

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
            self.codes = array("q")
        if self.scored:
            for window in windows:
                window.scores.merge(self.scored, self.log_loss_sum, self.brier_sum)
        for truth, guess in self.targets:
            for window in windows:
                window.regression.update(truth, guess)  # type: ignore[union-attr]
        self.targets.clear()
        self.predictions = self.scored = 0
        self.log_loss_sum = self.brier_sum = 0.0
        self.dirty = False
        return list(windows)
