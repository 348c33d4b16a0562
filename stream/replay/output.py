"""Where replayed metric records go: JSON lines (one record per line, as on the metrics topic),
or a Parquet file (by the ``.parquet`` extension) with one row per record: its scalar fields as
columns, and its nested ones (segment, window, classes, confusion matrix, metrics) as JSON text,
so any set of metrics, classes and custom metrics fits one schema. Written in row groups of
``ROW_GROUP`` records by pyarrow."""

from __future__ import annotations

from pathlib import Path
from typing import IO, Any, Protocol

import orjson

__all__ = ["PARQUET_COLUMNS", "MetricsFile", "open_metrics"]

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
