"""What a report is made from: metric records, alert events and the join's health, read from the
files replay writes (JSONL or Parquet) or from the worker's topics.

A line that cannot be read (truncated, not JSON, a record of another kind or version) is named,
with its file and line, in :attr:`Inputs.problems`; the rest of the report is still made.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from stream.replay.sources import jsonl_lines

__all__ = ["Inputs", "read_files", "read_topics"]

METRIC_FIELDS = ("model", "model_version", "segment", "window", "task", "n", "metrics", "final")
ALERT_FIELDS = ("alertname", "status", "labels", "starts_at")
MAX_PROBLEMS = 20  # named one by one; beyond, counted


@dataclass
class Inputs:
    metrics: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    health: dict[str, Any] | None = None
    dead_letters: int | None = None
    problems: list[str] = field(default_factory=list)
    skipped: int = 0  # unreadable lines and records, named or not

    def problem(self, text: str) -> None:
        self.skipped += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(text)

    def add_metric(self, record: Any, where: str) -> None:
        missing = _missing(record, METRIC_FIELDS)
        if missing:
            self.problem(f"{where}: not a metric record of this mlmon version (no {missing!r})")
        elif not isinstance(record["window"], dict) or not isinstance(record["metrics"], dict):
            self.problem(f"{where}: not a metric record of this mlmon version ('window' and 'metrics' are objects)")
        else:
            self.metrics.append(record)

    def add_alert(self, event: Any, where: str) -> None:
        missing = _missing(event, ALERT_FIELDS)
        if missing or not isinstance(event.get("labels"), dict):
            self.problem(f"{where}: not an alert event of this mlmon version (no {missing or 'labels'!r})")
        else:
            self.alerts.append(event)


def _missing(record: Any, fields: Iterable[str]) -> str | None:
    if not isinstance(record, dict):
        return "object"
    return next((name for name in fields if name not in record), None)


def read_files(metrics: Iterable[Path], alerts: Iterable[Path] = (), health: Path | None = None,
               dead_letters: Path | None = None) -> Inputs:
    """Metric records and alert events from JSONL or Parquet files; ``health``: the summary
    ``mlmon replay`` prints (its ``health`` and ``dead_letters``)."""
    out = Inputs()
    for path in metrics:
        for where, record in _rows(path, out):
            out.add_metric(record, where)
    for path in alerts:
        for where, event in _rows(path, out):
            out.add_alert(event, where)
    if health is not None:
        try:
            summary = orjson.loads(Path(health).read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            out.problem(f"{health}: not the summary mlmon replay prints ({exc})")
        else:
            if isinstance(summary, dict):
                out.health = summary.get("health", summary)
                out.dead_letters = summary.get("dead_letters")
    if dead_letters is not None and dead_letters.exists() and out.dead_letters is None:
        with dead_letters.open("rb") as f:
            out.dead_letters = sum(1 for line in f if line.strip())
    return out


def _rows(path: Path, out: Inputs) -> Iterator[tuple[str, Any]]:
    """(where, record) for each row of a JSONL or Parquet file; unreadable lines become problems."""
    if not path.exists():
        out.problem(f"{path}: no such file")
        return
    if path.suffix.lower() in (".parquet", ".pq"):  # as replay names them (``stream.replay.output``)
        yield from _parquet_rows(path, out)
        return
    for number, line, _ in jsonl_lines(path):  # numbered as replay numbers its inputs' lines
        try:
            yield f"{path}:{number}", orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            out.problem(f"{path}:{number}: not a JSON line ({exc})")


def _parquet_rows(path: Path, out: Inputs) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow's errors have no common base worth naming
        out.problem(f"{path}: not a Parquet file mlmon can read ({exc})")
        return
    for number, row in enumerate(table.to_pylist(), start=1):
        yield f"{path}:row {number}", _from_parquet(row)


_NESTED = ("segment", "window", "classes", "confusion_matrix", "metrics")


def _from_parquet(row: dict[str, Any]) -> dict[str, Any]:
    """Replay's Parquet output keeps nested objects as JSON text (``stream.replay.output``)."""
    out = dict(row)
    for key in _NESTED:
        value = row.get(key)
        if isinstance(value, str):
            try:
                out[key] = orjson.loads(value)
            except orjson.JSONDecodeError:
                out[key] = None  # then named as a problem: 'window' and 'metrics' must be objects
    return out


def read_topics(config: Any) -> Inputs:
    """Everything on the worker's metrics and alerts topics, and its latest health records."""
    from stream.kafka.tail import read

    out = Inputs()
    for number, (_, record) in enumerate(read(config, config.metrics_topic, follow=False), start=1):
        out.add_metric(record, f"topic {config.metrics_topic}, record {number}")
    for number, (_, event) in enumerate(read(config, config.alerts_topic, follow=False), start=1):
        out.add_alert(event, f"topic {config.alerts_topic}, record {number}")
    latest: dict[Any, dict[str, Any]] = {}
    for _, health in read(config, config.health_topic, follow=False):
        if isinstance(health, dict):
            latest[health.get("pid")] = health
    if latest:
        total: dict[str, Any] = {}
        for health in latest.values():
            for key, value in health.items():
                if isinstance(value, int) and not isinstance(value, bool) and key != "pid":
                    total[key] = total.get(key, 0) + value
        out.health = total
    return out
