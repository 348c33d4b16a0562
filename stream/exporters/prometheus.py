"""Prometheus exposition of what the engine knows: quality gauges, confusion-matrix counters,
join health, label lag, alert state.

A collector reads the engine's state at scrape time, so nothing on the per-pair path changes.
Names follow the Prometheus naming guide: one ``mlmon_`` prefix, base units, ``_total`` counters,
``_ratio`` for quality figures in [0, 1]. Labels are bounded: the engine already caps models,
classes and segment values (extra ones fold into ``__other__`` and are counted), and request ids
never become labels.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from stream.core.detectors import Cusum, DetectorRule
from stream.core.engine import Engine
from stream.core.health import LAG_BUCKETS_S, Health
from stream.core.keys import segment_label
from stream.core.rules import Rule, RuleState
from stream.core.spill import READ_BUCKETS_S, StoreStatus
from stream.core.windows import counting_window

__all__ = [
    "OTHER_GAUGES",
    "RATIO_METRICS",
    "SERIES_LABELS",
    "EngineCollector",
    "HealthSource",
    "RuleSource",
    "for_engine",
    "registry_for",
    "serve",
]

RATIO_METRICS = ("accuracy", "balanced_accuracy", "precision_macro", "recall_macro", "f1_macro",
                 "precision_weighted", "recall_weighted", "f1_weighted", "roc_auc", "roc_auc_ovr_macro",
                 "roc_auc_error_bound", "average_precision", "average_precision_macro",
                 "average_precision_error_bound", "ece")
OTHER_GAUGES = {"mcc": "mlmon_model_mcc", "cohen_kappa": "mlmon_model_cohen_kappa",
                "log_loss": "mlmon_model_log_loss", "brier": "mlmon_model_brier_score",
                "mae": "mlmon_model_mae", "rmse": "mlmon_model_rmse", "r2": "mlmon_model_r2",
                "mean_error": "mlmon_model_mean_error"}
SERIES_LABELS = ["model", "model_version", "segment", "window"]


HealthSource = Callable[[], tuple[Health, tuple[int, int], float]]  # (health, pending, watermark)
RuleSource = Callable[[], Sequence[tuple[Rule, RuleState] | tuple[DetectorRule, Cusum]]]  # threshold and detector rules


class EngineCollector(Collector):
    """Metric families from metric records (fed by ``observe``) and, at scrape time, from the
    health, pending counts, watermark and rule states the sources return."""

    def __init__(self, health: HealthSource, rules: RuleSource, counted_window: str | None,
                 lag: Callable[[], dict[tuple[str, int], int]] | None = None,
                 repartitioned: Callable[[], dict[str, int]] | None = None, custom: Sequence[str] = (),
                 sample: float = 1.0, store: Callable[[], StoreStatus] | None = None) -> None:
        self.health_source = health
        self.store_source = store  # what the join holds on disk (``join_memory_mb``)
        self.sample = sample  # the fraction of requests counted (``sample``)
        self.rule_source = rules
        self.lag_source = lag
        self.repartitioned_source = repartitioned  # input topic -> records forwarded to their partition
        self.counted_window = counted_window
        self.custom = tuple(custom)  # custom metrics' names: one gauge, labeled by metric
        self.lock = threading.Lock()
        self.latest: dict[tuple[str, str, str, str], dict[str, Any]] = {}  # newest window per series
        self.cells: dict[tuple[str, str, str, str, str], int] = {}  # confusion counters, additive
        self.revised: dict[tuple[str, str, str, str, str], int] = {}  # pairs that left a cell again
        self._seen_cells: dict[tuple[str, str, str, str, int], dict[tuple[str, str], int]] = {}

    def observe(self, records: list[dict[str, Any]]) -> None:
        """Take the engine's new metric records (call before the adapter clears its outbox)."""
        with self.lock:
            for record in records:
                self._observe(record)

    def _observe(self, record: dict[str, Any]) -> None:
        window = record["window"]
        segment = segment_label(record["segment"])
        series = (record["model"], record["model_version"], segment, window["name"])
        current = self.latest.get(series)
        if current is None or window.get("start", 0) >= current["window"].get("start", 0):
            self.latest[series] = record
        if window["name"] == self.counted_window and "confusion_matrix" in record:
            self._count_cells(series, window.get("start", 0), record)

    def forget(self, model: str) -> None:
        """Drop a model's series: it gave its slot up to another (see stream.kafka.registry)."""
        with self.lock:
            self.latest = {k: v for k, v in self.latest.items() if k[0] != model}
            self.cells = {k: v for k, v in self.cells.items() if k[0] != model}
            self.revised = {k: v for k, v in self.revised.items() if k[0] != model}
            self._seen_cells = {k: v for k, v in self._seen_cells.items() if k[0] != model}

    def _count_cells(self, series: tuple[str, str, str, str], start: int, record: dict[str, Any]) -> None:
        """A counter never goes down: a cell that shrank (a pair revised by a label that won over
        its first one) counts the pairs that left it in ``revised``; pairs minus revised pairs is
        the exact count."""
        key = (*series, start)
        seen = self._seen_cells.setdefault(key, {})
        classes = record["classes"]
        now = {(actual, predicted): record["confusion_matrix"][i][j] for i, actual in enumerate(classes)
               for j, predicted in enumerate(classes)}
        for pair in [*now, *(p for p in seen if p not in now)]:  # a record lists the classes it has pairs of
            count = now.get(pair, 0)
            grown = count - seen.get(pair, 0)
            if grown:
                cell = (*series[:3], *pair)
                counters = self.cells if grown > 0 else self.revised
                counters[cell] = counters.get(cell, 0) + abs(grown)
                seen[pair] = count
        if record["final"]:
            del self._seen_cells[key]

    def collect(self) -> Iterator[Any]:
        with self.lock:
            yield from self._quality()
            yield from self._confusion()
        yield from self._health()
        yield from self._alerts()
        if self.lag_source is not None:
            lag = GaugeMetricFamily("mlmon_consumer_lag_records", "input records not yet processed",
                                    labels=["topic", "partition"])
            for (topic, partition), records in self.lag_source().items():
                lag.add_metric([topic, str(partition)], records)
            yield lag
        if self.repartitioned_source is not None:
            forwarded = CounterMetricFamily("mlmon_repartitioned_records", "input records that arrived on another "
                                            "partition than their request_id's (murmur2) and were forwarded to it",
                                            labels=["topic"])
            for topic, count in self.repartitioned_source().items():
                forwarded.add_metric([topic], count)
            yield forwarded

    def _quality(self) -> Iterator[Any]:
        families = {name: GaugeMetricFamily(f"mlmon_model_{name}_ratio",
                                            f"{name} of the newest window of each series", labels=SERIES_LABELS)
                    for name in RATIO_METRICS}
        families.update({name: GaugeMetricFamily(metric, f"{name} of the newest window of each series",
                                                 labels=SERIES_LABELS) for name, metric in OTHER_GAUGES.items()})
        per_class = {name: GaugeMetricFamily(f"mlmon_model_class_{name}_ratio",
                                             f"per-class {name} of the newest window of each series",
                                             labels=[*SERIES_LABELS, "class"])
                     for name in ("precision", "recall", "f1")}
        coverage = GaugeMetricFamily("mlmon_model_label_coverage_ratio",
                                     "labeled predictions / predictions in the newest window", labels=SERIES_LABELS)
        pairs = GaugeMetricFamily("mlmon_model_window_pairs", "joined pairs in the newest window", labels=SERIES_LABELS)
        error = GaugeMetricFamily("mlmon_model_accuracy_standard_error_ratio",
                                  "standard error of the newest window's accuracy as an estimate of every request's "
                                  "(with sample below 1)", labels=SERIES_LABELS)
        custom = GaugeMetricFamily("mlmon_model_custom_metric", "custom metrics (custom_metrics) of the newest window",
                                   labels=[*SERIES_LABELS, "metric"])
        calibration = {name: GaugeMetricFamily(f"mlmon_model_calibration_{name}", f"{doc} per calibration bin "
                                               "of the positive class's score, newest window",
                                               labels=[*SERIES_LABELS, "bin"])
                       for name, doc in (("mean_score_ratio", "mean score"),
                                         ("fraction_positive_ratio", "fraction of positive labels"),
                                         ("pairs", "pairs"))}
        for series, record in self.latest.items():
            labels = list(series)
            for name, family in families.items():
                value = record["metrics"].get(name)
                if isinstance(value, int | float):
                    family.add_metric(labels, float(value))
            for name, family in per_class.items():
                for cls, value in record["metrics"].get(name, {}).items():
                    family.add_metric([*labels, cls], value)
            for name in self.custom:
                value = record["metrics"].get(name)
                if isinstance(value, int | float):
                    custom.add_metric([*labels, name], float(value))
            for k, cell in enumerate(record["metrics"].get("calibration", ())):
                where = [*labels, f"{k / 10:.1f}-{(k + 1) / 10:.1f}"]
                calibration["pairs"].add_metric(where, cell["count"])
                if cell["count"]:
                    calibration["mean_score_ratio"].add_metric(where, cell["mean_score"])
                    calibration["fraction_positive_ratio"].add_metric(where, cell["fraction_positive"])
            if record.get("label_coverage") is not None:
                coverage.add_metric(labels, record["label_coverage"])
            pairs.add_metric(labels, record["n"])
            if (value := record.get("standard_errors", {}).get("accuracy")) is not None:
                error.add_metric(labels, value)
        yield from families.values()
        yield from per_class.values()
        yield coverage
        yield pairs
        yield error
        yield custom
        yield from calibration.values()

    def _confusion(self) -> Iterator[Any]:
        cells = CounterMetricFamily(
            "mlmon_confusion_matrix_pairs", "joined pairs by actual and predicted class (sum over any range)",
            labels=["model", "model_version", "segment", "actual", "predicted", "correct"])
        revised = CounterMetricFamily(
            "mlmon_confusion_matrix_revised_pairs", "pairs that left a cell again when a label that wins over their "
            "first one came (pairs minus revised pairs: the exact count)",
            labels=["model", "model_version", "segment", "actual", "predicted", "correct"])
        for labels, count in self.cells.items():
            correct = "true" if labels[3] == labels[4] else "false"
            cells.add_metric([*labels, correct], count)
            revised.add_metric([*labels, correct], self.revised.get(labels, 0))  # the same series: PromQL subtracts
        yield cells
        yield revised

    def _health(self) -> Iterator[Any]:
        h, (pending_predictions, pending_labels), watermark_s = self.health_source()
        simple = {
            "mlmon_predictions": ("prediction records received", h.predictions),
            "mlmon_labels": ("label records received", h.labels),
            "mlmon_pairs": ("predictions joined with their label", h.pairs),
            "mlmon_expired_predictions": ("predictions with no label within the join TTL", h.expired_predictions),
            "mlmon_orphaned_labels": ("labels with no prediction within the join TTL", h.orphaned_labels),
            "mlmon_late_labels": ("labels that came after the join TTL", h.late_labels),
            "mlmon_refused_models": ("records refused because max_models was reached", h.refused_models),
        }
        for name, (doc, value) in simple.items():
            yield CounterMetricFamily(name, doc, value=value)
        duplicates = CounterMetricFamily("mlmon_duplicates", "later records for an already seen request id",
                                         labels=["kind"])
        duplicates.add_metric(["prediction"], h.duplicate_predictions)
        duplicates.add_metric(["label"], h.duplicate_labels)
        yield duplicates
        dead = CounterMetricFamily("mlmon_dead_letters", "records refused with a reason", labels=["source"])
        dead.add_metric(["predictions"], h.invalid_predictions)
        dead.add_metric(["labels"], h.invalid_labels)
        yield dead
        folded = CounterMetricFamily("mlmon_folded_values", "values folded into __other__ by a limit",
                                     labels=["kind"])
        folded.add_metric(["class"], h.folded_classes)
        folded.add_metric(["segment"], h.folded_segments)
        folded.add_metric(["version"], h.folded_versions)
        yield folded
        yield GaugeMetricFamily("mlmon_sample_ratio", "the fraction of requests counted, by request-id hash (sample)",
                                value=self.sample)
        unsampled = CounterMetricFamily("mlmon_unsampled_records", "records of the requests that sampling leaves out",
                                        labels=["source"])
        unsampled.add_metric(["predictions"], h.unsampled_predictions)
        unsampled.add_metric(["labels"], h.unsampled_labels)
        yield unsampled
        pending = GaugeMetricFamily("mlmon_pending_requests", "requests waiting for their other half",
                                    labels=["side"])
        pending.add_metric(["prediction"], pending_predictions)
        pending.add_metric(["label"], pending_labels)
        yield pending
        if self.store_source is not None:
            yield from _store(self.store_source())
        buckets, running = [], 0
        for bound, count in zip(LAG_BUCKETS_S, list(h.label_lag_buckets), strict=True):
            running += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), running))
        yield HistogramMetricFamily("mlmon_label_lag_seconds", "label timestamp minus prediction timestamp",
                                    buckets=buckets, sum_value=h.label_lag_sum_s)
        watermark = GaugeMetricFamily("mlmon_watermark_seconds", "event-time watermark (epoch seconds)")
        if watermark_s != float("-inf"):
            watermark.add_metric([], watermark_s)
        yield watermark

    def _alerts(self) -> Iterator[Any]:
        series = ["alertname", "model", "model_version", "segment"]
        firing = GaugeMetricFamily("mlmon_alert_firing", "1 while an mlmon rule fires for a series, else 0",
                                   labels=[*series, "window", "severity"])
        baseline = GaugeMetricFamily("mlmon_detector_baseline_ratio", "the in-control proportion a detector rule's "
                                     "CUSUM judges against (learned or given)", labels=series)
        evidence = GaugeMetricFamily("mlmon_detector_evidence_ratio", "a detector's CUSUM statistic over its "
                                     "threshold: it fires (or, firing, resolves) at 1", labels=series)
        for rule, state in self.rule_source():
            labels = state.labels
            segment = segment_label({k[len("segment_"):]: v for k, v in labels.items() if k.startswith("segment_")})
            values = [rule.name, labels["model"], labels["model_version"], segment]
            firing.add_metric([*values, labels["window"], rule.severity], 1.0 if state.firing else 0.0)
            if isinstance(state, Cusum) and (design := state.current()) is not None:
                baseline.add_metric(values, 1.0 - design.p0)
                evidence.add_metric(values, state.statistic / design.h)
        yield firing
        yield baseline
        yield evidence


def _store(status: StoreStatus) -> Iterator[Any]:
    """The join's store on disk: pending requests there, its size, how long its batched reads take."""
    on_disk = GaugeMetricFamily("mlmon_pending_on_disk_requests", "of the pending requests, those waiting on "
                                "disk (beyond join_memory_mb)", labels=["side"])
    on_disk.add_metric(["prediction"], status.pending[0])
    on_disk.add_metric(["label"], status.pending[1])
    yield on_disk
    yield GaugeMetricFamily("mlmon_join_store_bytes", "the size of the join's store on disk", value=status.disk_bytes)
    buckets, running = [], 0
    for bound, count in zip(READ_BUCKETS_S, status.reads.counts, strict=True):
        running += count
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), running))
    yield HistogramMetricFamily("mlmon_join_store_read_seconds", "batched reads of pending state from the "
                                "join's store on disk", buckets=buckets, sum_value=status.reads.sum_s)


def for_engine(engine: Engine) -> EngineCollector:
    """A collector over one engine (the demo and replay). Confusion counters follow the records of
    ``counting_window``, so every pair adds to them exactly once."""
    counted = counting_window(engine.config.windows)
    return EngineCollector(lambda: (engine.health, engine.pending(), engine.watermark),
                           lambda: [*engine.rules.evaluated(), *engine.detectors.evaluated()],
                           counted.name if counted else None,
                           custom=[m.name for m in engine.config.custom_metrics], sample=engine.config.sample,
                           store=engine.store_status)


def registry_for(collector: EngineCollector) -> CollectorRegistry:
    """What /metrics serves: the engine's figures and the process's own (memory, CPU, open files:
    prometheus_client's process collector, as ``mlmon_process_*``), so that memory can be watched
    against the pending requests that hold it."""
    registry = CollectorRegistry()
    registry.register(collector)
    ProcessCollector(namespace="mlmon", registry=registry)
    return registry


def serve(collector: EngineCollector, port: int, address: str = "127.0.0.1") -> int:
    """Serve /metrics (``registry_for``; on localhost unless told otherwise); returns the port (0
    picks a free one)."""
    registry = registry_for(collector)
    server, _ = start_http_server(port, addr=address, registry=registry)
    return int(server.server_port)
