"""The embedded engine: replay prediction and label JSONL files through the core.

Both files are fed in timestamp order (labels at their own timestamps; at equal timestamps
predictions first). Files already in order are merged as streams, so memory follows the
join state, not the file size; otherwise they are loaded and sorted. At the end the watermark
passes every window, so each window's last record is written and marked final.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import orjson

from stream.config import Config
from stream.core.engine import Engine
from stream.core.records import Label, Prediction, decode, parse_label, parse_prediction
from stream.errors import InvalidRecord

PREDICTION, LABEL = 0, 1
Event = tuple[float, int, int, Prediction | Label]  # (timestamp, kind, line, record)


class _OutOfOrder(Exception):
    """A file's timestamps go backwards: fall back to sorting in memory."""


@dataclass
class ReplayResult:
    engine: Engine
    metric_records: int
    alert_events: int
    dead_letters: int
    seconds: float
    sorted_in_memory: bool

    def summary(self) -> dict[str, Any]:
        health = self.engine.health
        return {
            "pairs": health.pairs,
            "metric_records": self.metric_records,
            "alert_events": self.alert_events,
            "dead_letters": self.dead_letters,
            "health": {k: v for k, v in asdict(health).items() if not k.startswith("label_lag_b")},
            "balance": self.engine.balance(),
            "seconds": round(self.seconds, 3),
            "pairs_per_s": round(health.pairs / self.seconds) if self.seconds else None,
        }


class Sink:
    """JSON-lines writers for the engine's three outboxes (any may be None: discarded)."""

    def __init__(self, metrics: IO[bytes] | None, alerts: IO[bytes] | None, dead: IO[bytes] | None) -> None:
        self.files = (metrics, alerts, dead)
        self.counts = [0, 0, 0]

    def drain(self, engine: Engine) -> None:
        boxes = (engine.metric_records, engine.alert_events, engine.dead_letters)
        for i, (box, out) in enumerate(zip(boxes, self.files, strict=True)):
            if box:
                self.counts[i] += len(box)
                if out is not None:
                    out.write(b"".join(orjson.dumps(item, option=orjson.OPT_APPEND_NEWLINE) for item in box))
                box.clear()


def _events(
    path: Path, kind: int, engine: Engine, check_order: bool
) -> Iterator[Event]:
    """Parse one JSONL file; malformed lines become dead letters with their line number."""
    source = "predictions" if kind == PREDICTION else "labels"
    parse: Callable[[dict[str, Any]], Prediction | Label] = parse_prediction if kind == PREDICTION else parse_label
    max_bytes = engine.config.max_record_bytes
    last = -math.inf
    with path.open("rb") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = parse(decode(line, max_bytes))
            except InvalidRecord as exc:
                text = line[:4096].decode("utf-8", errors="replace").rstrip("\n")
                engine.dead_letter(source, text, str(exc), file=str(path), line=number)
                continue
            ts = record.timestamp
            if check_order and ts < last:
                raise _OutOfOrder(f"{path}:{number}")
            last = max(last, ts)
            yield ts, kind, number, record


def _feed(engine: Engine, events: Iterable[Event], sink: Sink) -> None:
    receive = engine.receive
    records, dead = engine.metric_records, engine.dead_letters  # alerts only follow records
    for _, _, _, record in events:
        receive(record)
        if records or dead:
            sink.drain(engine)
    engine.finish()
    sink.drain(engine)


def replay(
    predictions: Path,
    labels: Path,
    config: Config,
    metrics_out: Path | None = None,
    alerts_out: Path | None = None,
    dead_letters_out: Path | None = None,
    clock: Callable[[], float] | None = None,
) -> ReplayResult:
    started = time.perf_counter()
    for sorted_in_memory in (False, True):
        engine = Engine(config, clock)
        outs = [p.open("wb") if p else None for p in (metrics_out, alerts_out, dead_letters_out)]
        try:
            sink = Sink(*outs)
            streams = [_events(predictions, PREDICTION, engine, not sorted_in_memory),
                       _events(labels, LABEL, engine, not sorted_in_memory)]
            try:
                if sorted_in_memory:
                    _feed(engine, sorted(event for s in streams for event in s), sink)
                else:
                    _feed(engine, heapq.merge(*streams), sink)
            except _OutOfOrder:
                continue
        finally:
            for out in outs:
                if out is not None:
                    out.close()
        seconds = time.perf_counter() - started
        metrics, alerts, dead = sink.counts
        return ReplayResult(engine, metrics, alerts, dead, seconds, sorted_in_memory)
    raise AssertionError("unreachable")
