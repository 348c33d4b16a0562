"""Partial window states: exported per input partition, merged into one metric record per window.

A Kafka worker owns some input partitions; each partition's engine publishes the *absolute*
additive state of its windows (a "partial"). The merger keeps the latest partial per
(window, partition) and sums them, so a replayed or duplicated partial can never count twice.

>>> a = {"classes": ["x", "y"], "cells": [[3, 1], [0, 2]], "predictions": 8, "scored": 0,
...      "log_loss_sum": 0.0, "brier_sum": 0.0, "regression": None}
>>> b = {"classes": ["y", "z"], "cells": [[1, 0], [1, 0]], "predictions": 3, "scored": 0,
...      "log_loss_sum": 0.0, "brier_sum": 0.0, "regression": None}
>>> state = merge_states([a, b])
>>> state.classes, state.counts.tolist(), state.predictions
(['x', 'y', 'z'], [[3, 1, 0], [0, 3, 0], [0, 1, 0]], 11)
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from stream.core.custom import MetricBook
from stream.core.metrics import RegressionStats, ScoreSums, classification
from stream.core.ranking import ScoreBins, figures_many
from stream.core.sampling import standard_errors

__all__ = ["Figures", "WindowState", "assemble", "merge_states", "metric_record", "record_figures",
           "record_figures_many", "rolling_state"]


@dataclass
class WindowState:
    """The additive state of one window: everything a metric record is computed from."""

    predictions: int
    classes: list[str]
    counts: npt.NDArray[np.int64]
    scores: ScoreSums
    regression: RegressionStats | None
    bins: ScoreBins | None = None

    @property
    def n(self) -> int:
        return self.regression.n if self.regression is not None else int(self.counts.sum())

    def figures(self, positive: str | None = None, ranking: dict[str, Any] | None = None) -> dict[str, Any]:
        """classes, confusion_matrix and metrics of a metric record (``positive``: a binary
        model's positive class, if configured; ``ranking``: its bins' figures, if computed
        already)."""
        if self.regression is not None:
            return {"metrics": self.regression.get()}
        metrics = classification(self.counts, self.classes)
        if metrics:
            metrics.update(self.scores.get())
            if self.bins is not None:
                metrics.update(self.bins.get(self.classes, positive) if ranking is None else ranking)
        return {"classes": self.classes, "confusion_matrix": self.counts.tolist(), "metrics": metrics}

    def export(self, packed: bool = False) -> dict[str, Any]:
        """The state as a partial (``packed``: for another process of a replay, see
        ``ScoreBins.export``)."""
        r = self.regression
        return {
            "predictions": self.predictions,
            "classes": self.classes,
            "cells": self.counts if packed else self.counts.tolist(),
            "scored": self.scores.n,
            "log_loss_sum": self.scores.log_loss_sum,  # the float form earlier versions read
            "brier_sum": self.scores.brier_sum,
            "score_units": [str(self.scores.log_loss_units), str(self.scores.brier_units)],  # exact (metrics.units)
            "regression": None if r is None else r.floats(),  # what earlier versions read
            **({} if r is None else {"regression_exact": r.export()}),
            **(self.bins.export(packed) if self.bins is not None and self.bins.names else {}),
        }


Figures = tuple[str, int, dict[str, Any]]  # a record's task, n, and classes, confusion_matrix and metrics


def record_figures(model: str, state: WindowState, book: MetricBook | None = None) -> Figures:
    """What a metric record computes from a window's pairs; ``book`` gives the model's positive
    class and custom metrics. Pairs unchanged, figures unchanged: a window whose newer record
    differs only in its predictions reuses them."""
    return record_figures_many([(model, state)], book)[0]


def record_figures_many(windows: list[tuple[str, WindowState]], book: MetricBook | None = None) -> list[Figures]:
    """``record_figures`` of many windows (model, state), their ranking figures computed together
    (``ranking.figures_many``)."""
    positives = [book.of(model)[0] if book is not None else None for model, _ in windows]
    ranked = iter(figures_many([(state.bins, state.classes, positive) for (_, state), positive
                                in zip(windows, positives, strict=True) if state.bins is not None]))
    out: list[Figures] = []
    for (model, state), positive in zip(windows, positives, strict=True):
        n = state.n
        figures = state.figures(positive, next(ranked) if state.bins is not None else None)
        if book is not None:
            counts = None if state.regression is not None else state.counts
            book.add_custom(model, counts, state.classes, figures["metrics"], n)
        out.append(("regression" if state.regression is not None else "classification", n, figures))
    return out


def metric_record(
    model: str, version: str, segment: dict[str, str], window: dict[str, Any], state: WindowState,
    final: bool, emitted_at: str, book: MetricBook | None = None, sample: float = 1.0,
) -> dict[str, Any]:
    """A metric record (schemas/metric_record.json) from a window's state."""
    return assemble(model, version, segment, window, state.predictions, record_figures(model, state, book), final,
                    emitted_at, sample)


def assemble(model: str, version: str, segment: dict[str, str], window: dict[str, Any], predictions: int,
             figures: Figures, final: bool, emitted_at: str, sample: float = 1.0) -> dict[str, Any]:
    """A metric record from its parts (``predictions``: the window's, counted without labels;
    ``sample``: the fraction of requests sampled, stated with the figures' standard errors when
    below 1)."""
    timed = window["kind"] != "rolling"
    task, n, computed = figures
    if sample < 1.0:
        computed = {**computed, "sample_rate": sample, "standard_errors": standard_errors(computed, n, sample)}
    return {
        "model": model,
        "model_version": version,
        "segment": segment,
        "window": window,
        "task": task,
        "n": n,
        "predictions": predictions if timed else None,
        "label_coverage": (n / predictions) if timed and predictions else None,
        **computed,
        "final": final,
        "emitted_at": emitted_at,
    }


def merge_states(partials: list[dict[str, Any]]) -> WindowState:
    classes = sorted({c for p in partials for c in p["classes"]})
    position = {c: i for i, c in enumerate(classes)}
    counts = np.zeros((len(classes), len(classes)), dtype=np.int64)
    scores = ScoreSums()
    bins = ScoreBins()
    regression: RegressionStats | None = None
    predictions = 0
    for partial in partials:
        if "score_classes" in partial:
            bins.merge(partial["score_classes"], partial["score_hist"], partial["score_sums"],
                       partial.get("score_sums_exact"))
        predictions += partial["predictions"]
        index = [position[c] for c in partial["classes"]]
        if index:
            counts[np.ix_(index, index)] += np.asarray(partial["cells"], dtype=np.int64)
        exact = partial.get("score_units")
        if exact is not None:
            scores.add_units(partial["scored"], int(exact[0]), int(exact[1]))
        else:  # an earlier version's partial: its sums rounded to floats
            scores.merge(partial["scored"], partial["log_loss_sum"], partial["brier_sum"])
        if partial["regression"] is not None:
            regression = regression or RegressionStats()
            regression.add(RegressionStats.parse(partial.get("regression_exact") or partial["regression"]))
    return WindowState(predictions, classes, counts, scores, regression, None if regression else bins)


def rolling_state(partials: list[dict[str, Any]], size_n: int) -> WindowState:
    """The last ``size_n`` pairs of the partitions' rolling windows together (each partial holds its
    partition's last ``size_n``, in ``pairs``): by completion time, ties by request id."""
    pairs = heapq.nlargest(size_n, {(p[0], p[1]): p for partial in partials for p in partial["pairs"]}.values(),
                           key=lambda p: (p[0], p[1]))
    pairs.reverse()  # oldest first, as a window takes them
    scores = ScoreSums()
    if any(partial["regression"] is not None for partial in partials):
        regression = RegressionStats()
        for pair in pairs:
            regression.update(pair[2], pair[3])
        return WindowState(0, [], np.zeros((0, 0), dtype=np.int64), scores, regression)
    classes = sorted({c for p in pairs for c in (p[2], p[3])})
    position = {c: i for i, c in enumerate(classes)}
    counts = np.zeros((len(classes), len(classes)), dtype=np.int64)
    bins = ScoreBins()
    for _, _, truth, guess, log_loss, brier, *scored in pairs:
        counts[position[truth], position[guess]] += 1
        if log_loss is not None:
            scores.merge(1, log_loss, brier)
            if scored and scored[0] is not None:
                bins.update(truth, scored[0])
    return WindowState(0, classes, counts, scores, None, bins)
