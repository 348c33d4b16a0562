"""The monitoring engine: join, window, count, emit metric records and alert events.

Adapters (the replay engine, the faust worker) feed it validated records and watermarks and
drain its outboxes (``metric_records``, ``alert_events``, ``dead_letters``); the engine never
does I/O. Time is event time: ``advance(watermark)`` expires join state and finalizes windows,
``flush()`` emits one record per window that changed since the last flush.
"""

from __future__ import annotations

import fnmatch
import heapq
import itertools
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from stream.config import Config
from stream.core.confusion import ClassIndex, ConfusionMatrix
from stream.core.join import JoinBuffer, Outcome
from stream.core.metrics import RegressionStats, ScoreSums, classification
from stream.core.records import InvalidRecord, Label, Prediction, class_name, target_number
from stream.core.rules import RuleBook, rfc3339
from stream.core.windows import WindowSpec

OTHER = "__other__"
LAG_BUCKETS_S = (1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 43200.0, 86400.0, math.inf)


@dataclass
class Health:
    """Where every input record went; ``balance()`` proves nothing was lost."""

    predictions: int = 0
    labels: int = 0
    pairs: int = 0
    duplicate_predictions: int = 0
    duplicate_labels: int = 0
    expired_predictions: int = 0
    orphaned_labels: int = 0
    late_labels: int = 0
    invalid_predictions: int = 0
    invalid_labels: int = 0
    refused_models: int = 0
    folded_classes: int = 0
    folded_segments: int = 0
    label_lag_count: int = 0
    label_lag_sum_s: float = 0.0
    label_lag_buckets: list[int] = field(default_factory=lambda: [0] * len(LAG_BUCKETS_S))

    def observe_lag(self, lag_s: float) -> None:
        self.label_lag_count += 1
        self.label_lag_sum_s += lag_s
        for i, bound in enumerate(LAG_BUCKETS_S):
            if lag_s <= bound:
                self.label_lag_buckets[i] += 1
                return

    def balance(self, pending_predictions: int, pending_labels: int) -> dict[str, int]:
        """Inputs minus every place they went: both figures are 0 when nothing was lost."""
        return {
            "predictions": self.predictions - self.pairs - self.duplicate_predictions
            - self.expired_predictions - self.invalid_predictions - pending_predictions,
            "labels": self.labels - self.pairs - self.duplicate_labels - self.orphaned_labels
            - self.late_labels - self.invalid_labels - pending_labels,
        }


class Window:
    """Additive state of one window instance: predictions seen, pairs' matrix or regression sums."""

    __slots__ = ("cm", "dirty", "predictions", "regression", "scores")

    def __init__(self, classes: ClassIndex | None) -> None:
        self.predictions = 0
        self.cm = ConfusionMatrix(classes) if classes is not None else None
        self.regression = RegressionStats() if classes is None else None
        self.scores: ScoreSums | None = None
        self.dirty = False

    def add(self, truth: Any, guess: Any, scores: dict[str, float] | None, sign: int = 1) -> None:
        if self.cm is not None:
            self.cm.add(truth, guess, sign)
            if scores is not None:
                if self.scores is None:
                    self.scores = ScoreSums()
                self.scores.update(self.cm.index.names[truth], scores, sign)
        elif self.regression is not None and sign > 0:
            self.regression.update(truth, guess)

    @property
    def n(self) -> int:
        return self.cm.total if self.cm is not None else self.regression.n if self.regression else 0

    def figures(self) -> dict[str, Any]:
        if self.cm is None:
            return {"metrics": self.regression.get() if self.regression else {}}
        counts = self.cm.counts()
        classes = self.cm.classes()
        metrics = classification(counts, classes)
        if self.scores is not None:
            metrics.update(self.scores.get())
        return {"classes": classes, "confusion_matrix": counts.tolist(), "metrics": metrics}


class RollingWindow(Window):
    """The last ``size_n`` pairs of a series, in join order (river's Rolling over a matrix)."""

    __slots__ = ("pairs", "size_n")

    def __init__(self, size_n: int, classes: ClassIndex | None) -> None:
        super().__init__(classes)
        self.size_n = size_n
        self.pairs: deque[tuple[Any, Any, dict[str, float] | None]] = deque()

    def push(self, truth: Any, guess: Any, scores: dict[str, float] | None) -> None:
        self.add(truth, guess, scores)
        self.pairs.append((truth, guess, scores))
        if len(self.pairs) > self.size_n:
            evicted = self.pairs.popleft()
            if self.cm is not None:  # integer counts revert exactly; float sums are rebuilt on emit
                self.add(*evicted, sign=-1)

    @property
    def n(self) -> int:
        return len(self.pairs)

    def figures(self) -> dict[str, Any]:
        if self.cm is None:
            self.regression = RegressionStats()
            for truth, guess, _ in self.pairs:
                self.regression.update(truth, guess)
        return super().figures()


class Series:
    """One (model, version, segment): its windows and its rolling buffers."""

    __slots__ = ("model", "model_version", "rolling", "segment", "segment_key", "windows")

    def __init__(self, model: str, version: str, segment: dict[str, str], rolling: list[RollingWindow]) -> None:
        self.model = model
        self.model_version = version
        self.segment = segment
        self.segment_key = ",".join(f"{k}={v}" for k, v in segment.items())
        self.windows: dict[tuple[int, int], Window] = {}
        self.rolling = rolling


@dataclass
class Model:
    name: str
    regression: bool
    classes: ClassIndex | None
    segment_values: dict[str, set[str]] = field(default_factory=dict)


PendingPrediction = tuple[float, tuple[Series, ...], Any, "dict[str, float] | None", Model]
PendingLabel = tuple[float, Any]


class Engine:
    def __init__(self, config: Config, clock: Callable[[], float] | None = None) -> None:
        self.config = config
        self.specs = [s for s in config.windows if s.timed]
        self.rolling_specs = [s for s in config.windows if not s.timed]
        self.rules = RuleBook(config.rules)
        self.join = JoinBuffer(config.join_ttl_s)
        self.health = Health()
        self.watermark = -math.inf
        self.clock = clock or (lambda: self.watermark if math.isfinite(self.watermark) else 0.0)
        self.models: dict[str, Model] = {}
        self._groups: dict[tuple[str, str, Any], tuple[Series, ...]] = {}
        self._final_heap: list[tuple[float, int, Series, int, int]] = []
        self._seq = itertools.count()
        self._dirty: list[tuple[Series, int, int, Window]] = []
        self._next_emit = -math.inf
        self.metric_records: list[dict[str, Any]] = []
        self.alert_events: list[dict[str, Any]] = []
        self.dead_letters: list[dict[str, Any]] = []

    # ----------------------------------------------------------------- input

    def dead_letter(self, source: str, raw: Any, reason: str, **where: Any) -> None:
        """Refuse an input record (counted as received and invalid) with a reason a person can act on."""
        if source == "predictions":
            self.health.predictions += 1
        elif source == "labels":
            self.health.labels += 1
        self._refuse(source, raw, reason, **where)

    def _refuse(self, source: str, raw: Any, reason: str, **where: Any) -> None:
        if source == "predictions":
            self.health.invalid_predictions += 1
        elif source == "labels":
            self.health.invalid_labels += 1
        self.dead_letters.append({"source": source, "reason": reason, "raw": raw, **where})

    def prediction(self, pred: Prediction, raw: Any = None) -> None:
        try:
            model = self._model(pred.model)
            value = target_number(pred.value) if model.regression else self._class_id(model, pred.value)
        except InvalidRecord as exc:
            self.dead_letter("predictions", raw if raw is not None else pred.request_id, str(exc))
            return
        self.health.predictions += 1
        ts = pred.timestamp
        if ts + self.config.join_ttl_s + self.join_bucket_s <= self.watermark:
            self.health.expired_predictions += 1  # its windows are final already
            return
        group = self._group(model, pred.model_version, pred.segment)
        entry: PendingPrediction = (ts, group, value, pred.scores, model)
        outcome, _, label = self.join.add_prediction(pred.request_id, entry)
        if outcome is Outcome.DUPLICATE:
            self.health.duplicate_predictions += 1
            return
        self._count_prediction(group, ts)
        if outcome is Outcome.JOINED:
            self._pair(entry, label)  # type: ignore[arg-type]
        elif outcome is Outcome.LATE:
            self.health.late_labels += 1
            self.health.expired_predictions += 1

    def label(self, label: Label) -> None:
        self.health.labels += 1
        outcome, prediction, entry = self.join.add_label(label.request_id, (label.timestamp, label.value))
        if outcome is Outcome.JOINED:
            self._pair(prediction, entry)  # type: ignore[arg-type]
        elif outcome is Outcome.DUPLICATE:
            self.health.duplicate_labels += 1
        elif outcome is Outcome.LATE:
            self.health.late_labels += 1
            if prediction is not None:
                self.health.expired_predictions += 1

    @property
    def join_bucket_s(self) -> float:
        return self.join._prediction_due.bucket_s

    # --------------------------------------------------------------- routing

    def _model(self, name: str) -> Model:
        model = self.models.get(name)
        if model is None:
            if len(self.models) >= self.config.max_models:
                self.health.refused_models += 1
                raise InvalidRecord(
                    f"model '{name[:64]}' refused: already monitoring {self.config.max_models} models "
                    "(raise max_models)"
                )
            regression = any(fnmatch.fnmatchcase(name, p) for p in self.config.regression_models)
            model = self.models[name] = Model(name, regression, None if regression else ClassIndex())
        return model

    def _class_id(self, model: Model, value: Any) -> int:
        classes = model.classes
        assert classes is not None
        name = class_name(value)
        found = classes.ids.get(name)
        if found is not None:
            return found
        if len(classes) >= self.config.max_classes:
            self.health.folded_classes += 1
            name = OTHER
        return classes.id(name)

    def _group(self, model: Model, version: str, segment: dict[str, str] | None) -> tuple[Series, ...]:
        key = (model.name, version, tuple(segment.items()) if segment else None)
        group = self._groups.get(key)
        if group is None:
            parts = [{}] + [{k: self._segment_value(model, k, v)} for k, v in (segment or {}).items()]
            group = self._groups[key] = tuple(self._series(model, version, part) for part in parts)
        return group

    def _segment_value(self, model: Model, key: str, value: str) -> str:
        seen = model.segment_values.setdefault(key, set())
        if value not in seen:
            if len(seen) >= self.config.max_segment_values:
                self.health.folded_segments += 1
                return OTHER
            seen.add(value)
        return value

    def _series(self, model: Model, version: str, segment: dict[str, str]) -> Series:
        for group in self._groups.values():  # share series across groups (rare: once per new combination)
            for series in group:
                if series.model == model.name and series.model_version == version and series.segment == segment:
                    return series
        rolling = [RollingWindow(spec.size_n, model.classes) for spec in self.rolling_specs]
        return Series(model.name, version, segment, rolling)

    # --------------------------------------------------------------- counting

    def _count_prediction(self, group: tuple[Series, ...], ts: float) -> None:
        for series in group:
            for i, spec in enumerate(self.specs):
                for start in spec.starts(ts):
                    window = series.windows.get((i, start))
                    if window is None:
                        window = series.windows[(i, start)] = Window(self.models[series.model].classes)
                        end = spec.end(start)
                        final_at = math.inf if end is None else end + self.config.join_ttl_s + self.join_bucket_s
                        heapq.heappush(self._final_heap, (final_at, next(self._seq), series, i, start))
                    window.predictions += 1
                    self._touch(series, i, start, window)

    def _touch(self, series: Series, spec_index: int, start: int, window: Window) -> None:
        if not window.dirty:
            window.dirty = True
            self._dirty.append((series, spec_index, start, window))

    def _pair(self, prediction: PendingPrediction, label: PendingLabel) -> None:
        ts, group, guess, scores, model = prediction
        try:
            truth = target_number(label[1]) if model.regression else self._class_id(model, label[1])
        except InvalidRecord as exc:
            self.health.expired_predictions += 1  # its only label was unusable
            self._refuse("labels", {"label": label[1], "timestamp": label[0]}, str(exc), model=model.name)
            return
        self.health.pairs += 1
        self.health.observe_lag(label[0] - ts)
        for series in group:
            windows = series.windows
            for i, spec in enumerate(self.specs):
                for start in spec.starts(ts):
                    window = windows[(i, start)]
                    window.add(truth, guess, scores)
                    self._touch(series, i, start, window)
            for j, rolling in enumerate(series.rolling):
                rolling.push(truth, guess, scores)
                self._touch(series, -1 - j, 0, rolling)

    # ---------------------------------------------------------------- output

    def observe(self, ts: float) -> None:
        """Event time moved to ``ts``: advance the watermark and flush on each emit interval."""
        self.advance(ts - self.config.watermark_lag_s)
        if ts >= self._next_emit:
            if math.isfinite(self._next_emit):
                self.flush()
            interval = self.config.emit_interval_s
            self._next_emit = (ts // interval + 1) * interval

    def advance(self, watermark: float) -> None:
        if watermark <= self.watermark:
            return
        self.watermark = watermark
        expired, orphaned = self.join.expire(watermark)
        self.health.expired_predictions += len(expired)
        self.health.orphaned_labels += len(orphaned)
        heap = self._final_heap
        while heap and heap[0][0] <= watermark:
            _, _, series, i, start = heapq.heappop(heap)
            window = series.windows.pop((i, start))
            window.dirty = False
            self._emit(series, self.specs[i], start, window, final=True)
        if math.isinf(watermark):
            for series in self._all_series():
                for spec, rolling in zip(self.rolling_specs, series.rolling, strict=True):
                    if rolling.pairs:
                        rolling.dirty = False
                        self._emit(series, spec, 0, rolling, final=True)

    def flush(self) -> None:
        dirty, self._dirty = self._dirty, []
        for series, i, start, window in dirty:
            if window.dirty:
                window.dirty = False
                spec = self.specs[i] if i >= 0 else self.rolling_specs[-1 - i]
                self._emit(series, spec, start, window, final=False)

    def finish(self) -> None:
        """End of input: the watermark passes every window, so each one's last record is final."""
        self._dirty.clear()  # every window is about to be emitted as final anyway
        self.advance(math.inf)

    def _all_series(self) -> list[Series]:
        seen: dict[int, Series] = {}
        for group in self._groups.values():
            for series in group:
                seen[id(series)] = series
        return list(seen.values())

    def _emit(self, series: Series, spec: WindowSpec, start: int, window: Window, final: bool) -> None:
        now = self.clock()
        record: dict[str, Any] = {
            "model": series.model,
            "model_version": series.model_version,
            "segment": series.segment,
            "window": spec.describe(start),
            "task": "classification" if window.cm is not None else "regression",
            "n": window.n,
            "predictions": window.predictions if spec.timed else None,
            "label_coverage": (window.n / window.predictions) if spec.timed and window.predictions else None,
            **window.figures(),
            "final": final,
            "emitted_at": rfc3339(now),
        }
        self.metric_records.append(record)
        self.alert_events.extend(self.rules.evaluate(record, series.segment_key, now))

    # ---------------------------------------------------------------- status

    def pending(self) -> tuple[int, int]:
        return len(self.join.predictions), len(self.join.labels)

    def balance(self) -> dict[str, int]:
        return self.health.balance(*self.pending())


def record_key(record: dict[str, Any]) -> str:
    """The upsert key of a metric record: one per (model, version, segment, window instance)."""
    window = record["window"]
    segment = ",".join(f"{k}={v}" for k, v in sorted(record["segment"].items()))
    return f"{record['model']}|{record['model_version']}|{segment}|{window['name']}|{window.get('start', 0)}"
