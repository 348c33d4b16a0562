"""The embedded engine: replay prediction and label JSONL files through the core.

Both files are fed in timestamp order (labels at their own timestamps; at equal timestamps
predictions first). Files already in order are merged as streams, so memory follows the
join state, not the file size; otherwise they are loaded and sorted. At the end the watermark
passes every window, so each window's last record is written and marked final.
"""

from __future__ import annotations

import functools
import heapq
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import orjson

from stream.config import Config
from stream.core.clock import judge_in_time_order
from stream.core.engine import Engine
from stream.core.records import Label, Prediction, decode, parse_label, parse_prediction, raw_text
from stream.errors import InvalidRecord

__all__ = ["Collected", "Event", "ReplayResult", "Sink", "feed", "judged", "replay"]

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


def judged(events: Iterable[Event], engine: Engine, source: str, raw_of: Callable[[int], Any],
           **where: Any) -> Iterator[Event]:
    """One file's events in timestamp order, without those stamped alone far in the future: dead
    letters with ``raw_of(line)``, the line number and ``where`` (see ``stream.core.clock``)."""
    for event, reason in judge_in_time_order(events, _timestamp, engine.config.max_future_s):
        if reason is None:
            yield event
        else:
            number = event[2]
            engine.dead_letter(source, raw_of(number), reason, **where, line=number, request_id=event[3].request_id)


def _in_order(events: Iterator[Event], path: Path) -> Iterator[Event]:
    """The events as they come, while their timestamps never go backwards."""
    last = -math.inf
    for event in events:
        if event[0] < last:
            raise _OutOfOrder(f"{path}:{event[2]}")
        last = event[0]
        yield event


def _timestamp(event: Event) -> float:
    return event[0]


def _raw(path: Path, number: int) -> str:
    """Line ``number`` of ``path`` as text, cut at 4 KiB (for a dead letter: rare, so read again)."""
    with path.open("rb") as lines:
        for n, line in enumerate(lines, 1):
            if n == number:
                return raw_text(line)
    return ""


def _parsed(path: Path, kind: int, engine: Engine) -> Iterator[Event]:
    source = "predictions" if kind == PREDICTION else "labels"
    parse: Callable[[dict[str, Any]], Prediction | Label] = parse_prediction if kind == PREDICTION else parse_label
    max_bytes = engine.config.max_record_bytes
    with path.open("rb") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = parse(decode(line, max_bytes))
            except InvalidRecord as exc:
                engine.dead_letter(source, raw_text(line), str(exc), file=str(path), line=number)
                continue
            yield record.timestamp, kind, number, record


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


def feed(engine: Engine, events: Iterable[Event], sink: Sink | Collected, files: tuple[str, str] | None = None
         ) -> None:
    """Every event through the engine in the order given, then the end of input; the outboxes are
    drained into ``sink`` as they fill. ``files`` (predictions, labels) name, with the line, where
    a record refused by the engine came from."""
    receive = engine.receive
    records, dead = engine.metric_records, engine.dead_letters  # alerts only follow records
    for _, kind, line, record in events:
        if files is None:
            receive(record)
        else:
            receive(record, file=files[kind], line=line)
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
            streams = []
            for path, kind in ((predictions, PREDICTION), (labels, LABEL)):
                parsed = _parsed(path, kind, engine)
                ordered = sorted(parsed) if sorted_in_memory else _in_order(parsed, path)
                source = "predictions" if kind == PREDICTION else "labels"
                streams.append(judged(ordered, engine, source, functools.partial(_raw, path), file=str(path)))
            try:
                feed(engine, heapq.merge(*streams), sink, (str(predictions), str(labels)))
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
