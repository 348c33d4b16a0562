"""Where a replay's records go: ``Sink`` writes the engine's three outboxes to files (``Collected``
keeps them in memory, for the Python API). Metric records: JSON lines (one record per line, as on the metrics topic),
or a Parquet file (by the ``.parquet`` extension) with one row per record: its scalar fields as
columns, and its nested ones (segment, window, classes, confusion matrix, metrics) as JSON text,
so any set of metrics, classes and custom metrics fits one schema. Written in row groups of
``ROW_GROUP`` records by pyarrow."""

from __future__ import annotations

from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol, TypeVar

import orjson

if TYPE_CHECKING:
    from stream.core.engine import Engine

__all__ = ["PARQUET_COLUMNS", "Collected", "MetricsFile", "Outbox", "OutboxT", "Sink", "open_metrics"]

ROW_GROUP = 50_000
PARQUET_COLUMNS = ("model", "model_version", "segment", "window_name", "window_start", "window", "task", "n",
                   "predictions", "label_coverage", "classes", "confusion_matrix", "metrics", "final", "emitted_at")


class MetricsFile(Protocol):
    def write(self, records: list[dict[str, Any]]) -> None: ...

    def close(self) -> None: ...


class _Lines:
    def __init__(self, path: Path) -> None:
        self.out: IO[bytes] = path.open("wb")

    def write(self, records: list[dict[str, Any]]) -> None:
        self.out.write(b"".join(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in records))

    def close(self) -> None:
        self.out.close()


class _Parquet:
    def __init__(self, path: Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.pa = pa
        self.schema = pa.schema([
            ("model", pa.string()), ("model_version", pa.string()), ("segment", pa.string()),
            ("window_name", pa.string()), ("window_start", pa.int64()), ("window", pa.string()),
            ("task", pa.string()), ("n", pa.int64()), ("predictions", pa.int64()), ("label_coverage", pa.float64()),
            ("classes", pa.string()), ("confusion_matrix", pa.string()), ("metrics", pa.string()),
            ("sample_rate", pa.float64()), ("standard_errors", pa.string()),  # null without sampling
            ("final", pa.bool_()), ("emitted_at", pa.string()),
        ])
        self.writer = pq.ParquetWriter(path, self.schema, compression="zstd")
        self.rows: list[dict[str, Any]] = []

    def write(self, records: list[dict[str, Any]]) -> None:
        for r in records:
            self.rows.append({
                "model": r["model"], "model_version": r["model_version"], "segment": _json(r["segment"]),
                "window_name": r["window"]["name"], "window_start": r["window"].get("start"),
                "window": _json(r["window"]), "task": r["task"], "n": r["n"], "predictions": r["predictions"],
                "label_coverage": r["label_coverage"], "classes": _json(r.get("classes")),
                "confusion_matrix": _json(r.get("confusion_matrix")), "metrics": _json(r["metrics"]),
                "sample_rate": r.get("sample_rate"), "standard_errors": _json(r.get("standard_errors")),
                "final": r["final"], "emitted_at": r["emitted_at"],
            })
        if len(self.rows) >= ROW_GROUP:
            self._flush()

    def _flush(self) -> None:
        if self.rows:
            self.writer.write_table(self.pa.Table.from_pylist(self.rows, schema=self.schema))
            self.rows = []

    def close(self) -> None:
        self._flush()
        self.writer.close()


def _json(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def open_metrics(path: Path) -> MetricsFile:
    return _Parquet(path) if path.suffix.lower() in (".parquet", ".pq") else _Lines(path)


class Sink:
    """Writers for the engine's three outboxes (any may be None: discarded): metric records as
    JSONL or Parquet (``output``), alerts and dead letters as JSONL. ``final_only``: only each
    window's final record."""

    def __init__(self, metrics: MetricsFile | None, alerts: IO[bytes] | None, dead: IO[bytes] | None,
                 final_only: bool = False) -> None:
        self.metrics, self.alerts, self.dead = metrics, alerts, dead
        self.final_only = final_only
        self.counts = [0, 0, 0]

    def drain(self, engine: Engine) -> None:
        records = engine.metric_records
        if records:
            if self.final_only:
                records = [r for r in records if r["final"]]
            self.counts[0] += len(records)
            if self.metrics is not None:
                self.metrics.write(records)
            engine.metric_records.clear()
        for i, box, out in ((1, engine.alert_events, self.alerts), (2, engine.dead_letters, self.dead)):
            if box:
                self.counts[i] += len(box)
                if out is not None:
                    out.write(b"".join(orjson.dumps(item, option=orjson.OPT_APPEND_NEWLINE) for item in box))
                box.clear()

    def close(self) -> None:
        for out in (self.metrics, self.alerts, self.dead):
            if out is not None:
                out.close()


class Outbox(Protocol):
    """Where the engine's outboxes go: ``Sink``, ``Collected``, or a share's spool (``shards``)."""

    def drain(self, engine: Engine) -> None: ...

    def close(self) -> None: ...


OutboxT = TypeVar("OutboxT", bound=Outbox)


class Collected:
    """The engine's outboxes kept in memory (the Python API): final metric records only, and every
    alert event and dead letter."""

    def __init__(self) -> None:
        self.metrics: list[dict[str, Any]] = []
        self.alerts: list[dict[str, Any]] = []
        self.dead_letters: list[dict[str, Any]] = []

    def drain(self, engine: Engine) -> None:
        self.metrics += [r for r in engine.metric_records if r["final"]]
        self.alerts += engine.alert_events
        self.dead_letters += engine.dead_letters
        for box in (engine.metric_records, engine.alert_events, engine.dead_letters):
            box.clear()

    def close(self) -> None:
        pass
