"""A simulated classifier in production: predictions now, labels later, a degradation on cue.

Used by ``mlmon demo``, ``mlmon simulate``, the benchmarks and the tests, so every one of them
exercises the same realistic traffic: label delays, missing labels, duplicates.
"""

from __future__ import annotations

import heapq
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["Draw", "Scenario", "arrivals", "draws", "streams"]


@dataclass
class Scenario:
    pairs: int = 10_000
    start_ts: float = 1_767_225_600.0  # 2026-01-01T00:00:00Z
    rate_per_s: float = 10.0  # predictions per second of event time
    models: tuple[str, ...] = ("nba-game-outcome",)
    model_version: str = "v1"
    classes: tuple[str, ...] = ("home_win", "away_win")
    accuracy: float = 0.9
    degraded_accuracy: float = 0.55
    degrade_from: float = 0.5  # fraction of the run where the model starts to fail
    recover_at: float = 0.75  # fraction where it recovers (>= 1 means never)
    label_delay_mean_s: float = 600.0
    label_coverage: float = 1.0  # fraction of predictions that ever get a label
    duplicate_rate: float = 0.0  # fraction of records sent twice
    early_label_rate: float = 0.0  # fraction of labels stamped before their prediction
    with_scores: bool = True
    segments: tuple[str, ...] = ("home", "away")
    seed: int = 7


@dataclass
class Draw:
    """One request: its prediction and, if it gets one, its label."""

    prediction: dict[str, Any]
    label: dict[str, Any] | None
    duplicate_prediction: bool
    duplicate_label: bool


def draws(s: Scenario) -> Iterator[Draw]:
    rng = random.Random(s.seed)
    namespace = uuid.UUID(int=s.seed)
    for i in range(s.pairs):
        ts = s.start_ts + i / s.rate_per_s
        progress = i / s.pairs
        degraded = s.degrade_from <= progress < s.recover_at
        truth = rng.choice(s.classes)
        correct = rng.random() < (s.degraded_accuracy if degraded else s.accuracy)
        guess = truth if correct else rng.choice([c for c in s.classes if c != truth] or [truth])
        request_id = str(uuid.uuid5(namespace, str(i)))
        prediction: dict[str, Any] = {
            "request_id": request_id,
            "model": s.models[i % len(s.models)],
            "model_version": s.model_version,
            "timestamp": round(ts, 3),
            "prediction": guess,
        }
        if s.with_scores:
            top = rng.uniform(0.5, 1.0)
            rest = (1.0 - top) / max(1, len(s.classes) - 1)
            prediction["scores"] = {c: (top if c == guess else rest) for c in s.classes}
        if s.segments:
            prediction["segment"] = {"venue": s.segments[i % len(s.segments)]}
        label = None
        if rng.random() < s.label_coverage:
            delay = rng.expovariate(1.0 / s.label_delay_mean_s) if s.label_delay_mean_s > 0 else 0.0
            if rng.random() < s.early_label_rate:
                delay = -rng.uniform(0, 5)
            label = {"request_id": request_id, "timestamp": round(ts + delay, 3), "label": truth}
        yield Draw(prediction, label, rng.random() < s.duplicate_rate, rng.random() < s.duplicate_rate)


def streams(s: Scenario) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Predictions and labels, each sorted by timestamp, duplicates included."""
    predictions: list[dict[str, Any]] = []
    labels: list[dict[str, Any]] = []
    for d in draws(s):
        predictions.extend([d.prediction] * (1 + d.duplicate_prediction))
        if d.label is not None:
            labels.extend([d.label] * (1 + d.duplicate_label))
    labels.sort(key=lambda r: r["timestamp"])
    return predictions, labels


def arrivals(s: Scenario) -> list[tuple[float, int, dict[str, Any]]]:
    """Both streams in arrival order: (timestamp, 0 prediction | 1 label, record); at equal
    timestamps predictions first."""
    predictions, labels = streams(s)
    return list(heapq.merge(((p["timestamp"], 0, p) for p in predictions), ((x["timestamp"], 1, x) for x in labels),
                            key=lambda event: (event[0], event[1])))
