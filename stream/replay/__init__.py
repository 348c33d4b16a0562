"""The embedded engine: replay predictions and labels through the core (``mlmon replay``, backtests,
the Python API).

Inputs are JSONL, CSV or Parquet files (a path, a directory or a glob; see ``sources``) or rows in
memory. Both kinds are fed in timestamp order (labels at their own timestamps; at equal
timestamps predictions first, then by file and row). Inputs already in order are merged as
streams, so memory follows the join state, not the input; otherwise they are ordered by an
external merge sort (``ordering``), with bounded memory. At the end the watermark passes every
window, so each window's last record is written and marked final. By default (``final_only``)
that final record is a window's only one; rules still judge its revisions every
``emit_interval`` of event time, so alerts carry the times they would have had live.
``final_only=False`` writes every revision too.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stream.collector import fewer_collections
from stream.config import Config
from stream.core.clock import judge_in_time_order
from stream.core.engine import Engine
from stream.core.records import Label, Prediction, parse_label, parse_prediction, raw_text
from stream.core.wire import label_from_json, prediction_from_json
from stream.errors import InvalidRecord
from stream.replay import bulk, parts, shards
from stream.replay.exchange import Exchange
from stream.replay.ordering import RUN_EVENTS, Codec, external_sort
from stream.replay.output import Collected, Outbox, OutboxT, Sink, open_metrics
from stream.replay.ownership import owners
from stream.replay.progress import Progress
from stream.replay.sources import Input, inputs

__all__ = ["Collected", "Event", "ReplayResult", "Sink", "feed", "replay", "run"]

PREDICTION, LABEL = 0, 1
SOURCES = ("predictions", "labels")
ROW_BITS = 32  # an event's sequence number: (input index << ROW_BITS) | row number
ROW_MASK = (1 << ROW_BITS) - 1
Event = tuple[float, int, int, Prediction | Label]  # (timestamp, kind, sequence number, record)
FEED_EVENTS = 4096  # events the engine takes at a time (and between progress refreshes)
_OTHER = bytes([1, 0]) + bytes(254)  # share 0's rows of two: owners 0 -> 1, 1 -> 0 (``bytes.translate``)


class _OutOfOrder(Exception):
    """An input's timestamps go backwards: order them with the external sort instead."""


@dataclass
class ReplayResult:
    engine: Engine
    metric_records: int
    alert_events: int
    dead_letters: int
    seconds: float
    sorted_in_memory: bool  # False: the inputs were in order and streamed; True: sorted, or held in memory (bulk)
    inputs: dict[str, list[str]] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        health = self.engine.health
        return {
            "pairs": health.pairs,
            "metric_records": self.metric_records,
            "alert_events": self.alert_events,
            "dead_letters": self.dead_letters,
            "health": {k: v for k, v in health.as_dict().items() if not k.startswith("label_lag_b")},
            "balance": self.engine.balance(),
            "seconds": round(self.seconds, 3),
            "pairs_per_s": round(health.pairs / self.seconds) if self.seconds else None,
        }


class _Inputs:
    """The inputs of one kind, read into events; with ``share`` (index, count), only the records of
    that share's requests (see ``shards``), read from its file ``part`` when there is one (``parts``)."""

    def __init__(self, kind: int, found: list[Input], config: Config, share: tuple[int, int] | None = None,
                 part: Path | None = None) -> None:
        self.kind, self.source, self.found, self.config = kind, SOURCES[kind], found, config
        self.share = share
        self.part = part
        self.exchange: Exchange | None = None  # two shares held in memory: the owner pass split (``exchange``)
        self.occupancy: shards.Occupancy | None = None  # with a share, of the last ``events`` (see there)

    @property
    def held_bytes(self) -> int:
        """About what its rows take as text held in memory (``bulk.fits``): its share's file's
        size when it has one, else its inputs'."""
        if self.part is not None:
            return self.part.stat().st_size
        return sum(found.held_bytes for found in self.found)

    def where(self, sequence: int) -> dict[str, Any]:
        """Where an event's record came from, for its dead letter."""
        found = self.found[sequence >> ROW_BITS]
        number = sequence & ROW_MASK
        if found.path is None:
            return {"line": number}
        return {"file": found.name, "line" if found.format == "jsonl" else "row": number}

    def raw(self, sequence: int) -> Any:
        return self.found[sequence >> ROW_BITS].raw(sequence & ROW_MASK, self.source)

    def owned(self, index: int, progress: Progress) -> Iterator[tuple[int, Any]]:
        """(sequence number, raw) of input ``index``'s rows, those of the share's requests with a share."""
        for sequences, raws in self.owned_chunks(index, progress):
            yield from zip(sequences, raws, strict=True)

    def owned_chunks(self, index: int, progress: Progress) -> Iterator[tuple[list[int], list[Any]]]:
        """``owned`` a chunk at a time: (sequence numbers, raws)."""
        if self.part is not None:  # its reading was counted as its share's file was written
            yield from parts.frames(self.part, index)
            return
        max_bytes = self.config.max_record_bytes
        read = progress.read if progress.bar is not None else None
        mine, shares = self.share or (0, 1)
        if self.exchange is not None:
            for (sequences, raws, size), found in self.exchange.owned(
                    self.numbered(index), lambda raws, sequences: owners(raws, sequences, shares, max_bytes)):
                if read is not None:
                    read(size)
                mask = found if mine == 1 else found.translate(_OTHER)  # a byte a row: 1 where it is this share's
                yield list(itertools.compress(sequences, mask)), list(itertools.compress(raws, mask))
            return
        for sequences, raws, size in self.numbered(index):
            if read is not None:
                read(size)
            if shares > 1:
                keep = [share == mine for share in owners(raws, sequences, shares, max_bytes)]
                sequences, raws = list(itertools.compress(sequences, keep)), list(itertools.compress(raws, keep))
            yield sequences, raws

    def numbered(self, index: int) -> Iterator[tuple[list[int], list[Any], int]]:
        """Input ``index``'s rows a chunk at a time: (sequence numbers, raws, bytes they stand for)."""
        base = index << ROW_BITS
        for numbers, raws, size in self.found[index].chunks(self.source):
            yield (numbers if base == 0 else [base | number for number in numbers]), raws, size

    def record(self, sequence: int, raw: Any, engine: Engine) -> Prediction | Label | None:
        """A row's record; or None, after its dead letter with the reason."""
        try:
            if type(raw) is bytes:
                return (prediction_from_json if self.kind == PREDICTION else label_from_json)(
                    raw, self.config.max_record_bytes)
            if isinstance(raw, Exception):
                raise InvalidRecord(str(raw))
            if not isinstance(raw, dict):
                raise InvalidRecord(f"expected a JSON object, got {type(raw).__name__}")
            return (parse_prediction if self.kind == PREDICTION else parse_label)(raw)
        except InvalidRecord as exc:
            text = raw if isinstance(raw, dict) else raw_text(raw if isinstance(raw, bytes) else repr(raw))
            engine.dead_letter(self.source, text, str(exc), **self.where(sequence))
            return None

    def parsed(self, index: int, engine: Engine, progress: Progress) -> Iterator[Event]:
        kind = self.kind
        for sequence, raw in self.owned(index, progress):
            record = self.record(sequence, raw, engine)
            if record is not None:
                yield record.timestamp, kind, sequence, record

    def starts_in_order(self, rows: int = 1000) -> bool:
        """Whether the first ``rows`` valid records of each input are in time order (a shuffled
        input is not, at once)."""
        from_json = prediction_from_json if self.kind == PREDICTION else label_from_json
        for found in self.found:
            last = -math.inf
            for _, raw, _size in itertools.islice(found.rows(self.source), rows):
                try:
                    ts = from_json(raw, self.config.max_record_bytes).timestamp if type(raw) is bytes else last
                except InvalidRecord:
                    continue
                if ts < last:
                    return False
                last = ts
        return True

    def events(self, engine: Engine, progress: Progress, sort: bool, run_events: int) -> Iterator[Event]:
        """This kind's events in timestamp order, without those stamped alone far in the future."""
        if sort:
            ordered: Iterator[Event] = external_sort(
                itertools.chain.from_iterable(self.parsed(i, engine, progress) for i in range(len(self.found))),
                run_events, codec=_codec(Prediction if self.kind == PREDICTION else Label))
        elif len(self.found) == 1:
            ordered = _in_order(self.parsed(0, engine, progress), self.found[0].name)
        else:
            ordered = heapq.merge(*(_in_order(self.parsed(i, engine, progress), self.found[i].name)
                                    for i in range(len(self.found))))
        if self.share is not None:  # every record is taken, and counted (see ``shards.Occupancy``)
            if self.config.max_future_s > 0:
                self.occupancy = shards.Occupancy(self.config.max_future_s)  # anew: input found out of order
                ordered = self.occupancy.watch(ordered)  # on the way is read again, sorted
            yield from ordered
            return
        for event, reason in judge_in_time_order(ordered, _timestamp, self.config.max_future_s):
            if reason is None:
                yield event
            else:
                sequence = event[2]
                engine.dead_letter(self.source, self.raw(sequence), reason, **self.where(sequence),
                                   request_id=event[3].request_id)


def _in_order(events: Iterator[Event], name: str) -> Iterator[Event]:
    """The events as they come, while their timestamps never go backwards."""
    last = -math.inf
    for event in events:
        if event[0] < last:
            raise _OutOfOrder(f"{name}: row {event[2] & ROW_MASK}")
        last = event[0]
        yield event


def _codec(cls: type[Prediction] | type[Label]) -> Codec:
    """Events of one kind as the external sort spills them: a block as columns (the events'
    timestamps, kinds and sequence numbers, then each field of their records), which pickle and
    come back together several times faster than a tuple per record."""
    names = [f.name for f in dataclasses.fields(cls)]

    def pack(block: list[Event]) -> tuple[Any, ...]:
        ts, kinds, sequences, records = zip(*block, strict=True)
        return ts, kinds, sequences, *([getattr(r, name) for r in records] for name in names)

    def unpack(columns: tuple[Any, ...]) -> list[Event]:
        return list(zip(columns[0], columns[1], columns[2], map(cls, *columns[3:]), strict=True))

    return Codec(pack, unpack)


def _timestamp(event: Event) -> float:
    return event[0]


def feed(engine: Engine, events: Iterable[Event], sink: Outbox,
         files: list[list[tuple[str, bool]]] | None = None, progress: Progress | None = None) -> None:
    """Every event through the engine in the order given (``FEED_EVENTS`` at a time: see
    ``Engine.receive_many``), then the end of input; the outboxes are drained into ``sink`` after
    each batch. ``files[kind][input]`` (its name, and whether it counts lines rather than rows)
    says where a record the engine refuses came from."""
    iterator = iter(events)
    while True:
        batch = list(itertools.islice(iterator, FEED_EVENTS))
        if not batch:
            break
        receive(engine, batch, sink, files, progress)
    engine.finish()
    sink.drain(engine)


def receive(engine: Engine, batch: list[Event], sink: Outbox, files: list[list[tuple[str, bool]]] | None,
            progress: Progress | None) -> None:
    """One batch of ``feed``."""
    records = [event[3] for event in batch]
    if files is None:
        engine.receive_many(records)
    else:
        def where(i: int) -> dict[str, Any]:
            _, kind, sequence, _ = batch[i]
            name, lines = files[kind][sequence >> ROW_BITS]
            return {"file": name, "line" if lines else "row": sequence & ROW_MASK}

        engine.receive_many(records, where)
    if engine.metric_records or engine.dead_letters:  # alerts only follow records
        sink.drain(engine)
    if progress is not None:
        progress.status(engine.health.pairs, engine.watermark)


def run(predictions: Any, labels: Any, config: Config, open_sink: Callable[[], Sink | Collected],
        clock: Callable[[], float] | None = None, format: str | None = None, final_only: bool = True,
        quiet: bool = True, run_events: int = RUN_EVENTS, processes: int | None = None,
        ) -> tuple[Engine, Sink | Collected, bool, list[_Inputs]]:
    """Replay ``predictions`` and ``labels`` (files or rows in memory) into the sink ``open_sink``
    makes; returns the engine, the sink, whether the inputs had to be sorted, and the inputs.
    ``processes``: 2 replays files in two shares, each in its own process (``shards``), when the
    settings allow, or else reads files in time order in a child process (``pipeline``); 1 does
    neither (one share, when the settings allow); by default files of ``pipeline.MIN_BYTES`` or
    more on a machine of two cores or more are. The garbage collector runs less often meanwhile (``collector``)."""
    with fewer_collections():
        kinds = [_Inputs(PREDICTION, inputs(predictions, "predictions", format), config),
                 _Inputs(LABEL, inputs(labels, "labels", format), config)]
        count = shards.shares_for(config, kinds, final_only, clock, processes)
        if count:
            shared = shards.replay_shared(predictions, labels, config, open_sink, format, quiet, run_events, count)
            if shared is not None:
                return (*shared, kinds)
        return _run(predictions, labels, config, open_sink, clock, format, final_only, quiet, run_events, processes)


def _run(predictions: Any, labels: Any, config: Config, open_sink: Callable[[], OutboxT],
         clock: Callable[[], float] | None, format: str | None, final_only: bool, quiet: bool, run_events: int,
         processes: int | None, share: tuple[int, int] | None = None, part: tuple[Path, Path] | None = None,
         exchange: Exchange | None = None) -> tuple[Engine, OutboxT, bool, list[_Inputs]]:
    """``run``, in this process; with ``share``, that share's records into final partials
    (``shards``), read from its files ``part`` (predictions, labels) when it has them (``parts``);
    with ``exchange`` too, the owner pass split with the other share's process when both hold
    their shares in memory (``exchange``; closed here either way)."""
    from stream.replay.pipeline import MIN_BYTES, child_events

    kinds = [_Inputs(PREDICTION, inputs(predictions, "predictions", format), config, share, part and part[0]),
             _Inputs(LABEL, inputs(labels, "labels", format), config, share, part and part[1])]
    total = sum(found.size_bytes for kind in kinds for found in kind.found)
    at_once = min(share[1], shards.SHARES) if share is not None else 1  # shares replayed at once
    memory_share = 1 / at_once
    if share is not None and bulk.fits(kinds, at_once):  # all in memory: settled requests are counted at once
        engine = Engine(config, clock, revisions=False, emit_partials=True, memory_share=memory_share, packed=True)
        engine.sweeps = []
        sink = open_sink()
        progress = Progress(total, quiet)
        for kind in kinds:
            kind.exchange = exchange
        try:
            bulk.feed_all(kinds, engine, sink, _files(kinds), progress)
        finally:
            if exchange is not None:
                exchange.close()
            sink.close()
            progress.close()
        return engine, sink, True, kinds
    if exchange is not None:  # the other process reads its share as it comes, and so does this one: alone
        exchange.close()
    if processes is None:
        processes = 2 if total >= MIN_BYTES and (os.cpu_count() or 1) >= 2 else 1
    in_order = all(kind.starts_in_order() for kind in kinds) if processes > 1 or share is not None else True
    if processes > 1 and not in_order:
        processes = 1  # it will be sorted: no child (see ``pipeline``)
    for sort in (False, True) if in_order else (True,):  # input out of order from the start: sorted at once
        engine = Engine(config, clock, revisions=not final_only, emit_partials=share is not None,
                        memory_share=memory_share, packed=True)
        if share is not None:
            engine.sweeps = []
        sink = open_sink()
        progress = Progress(total, quiet)
        try:
            files = _files(kinds)
            if processes > 1 and files is not None and not sort:
                events: Iterator[Event] = child_events(predictions, labels, config, engine, progress, format,
                                                       run_events)
            else:
                events = heapq.merge(*(kind.events(engine, progress, sort, run_events) for kind in kinds))
            try:
                feed(engine, events, sink, files, progress)
            except _OutOfOrder:
                continue
        finally:
            sink.close()
            progress.close()
        return engine, sink, sort, kinds
    raise AssertionError("unreachable")


def _files(kinds: list[_Inputs]) -> list[list[tuple[str, bool]]] | None:
    """Each input's name, and whether it counts lines rather than rows (see ``feed``); None for rows in memory."""
    return None if _in_memory(kinds) else [[(f.name, f.format == "jsonl") for f in kind.found] for kind in kinds]


def _in_memory(kinds: list[_Inputs]) -> bool:
    return all(found.path is None for kind in kinds for found in kind.found)


def replay(
    predictions: Any,
    labels: Any,
    config: Config,
    metrics_out: Path | None = None,
    alerts_out: Path | None = None,
    dead_letters_out: Path | None = None,
    clock: Callable[[], float] | None = None,
    format: str | None = None,
    final_only: bool = True,
    quiet: bool = True,
    run_events: int = RUN_EVENTS,
    processes: int | None = None,
) -> ReplayResult:
    """Replay into files: metric records (JSONL, or Parquet by the ``.parquet`` extension), alert
    events and dead letters (JSONL)."""
    started = time.perf_counter()

    def open_sink() -> Sink:
        return Sink(open_metrics(metrics_out) if metrics_out else None,
                    alerts_out.open("wb") if alerts_out else None,
                    dead_letters_out.open("wb") if dead_letters_out else None, final_only)

    engine, sink, sort, kinds = run(predictions, labels, config, open_sink, clock, format, final_only, quiet,
                                    run_events, processes)
    assert isinstance(sink, Sink)
    metrics, alerts, dead = sink.counts
    return ReplayResult(engine, metrics, alerts, dead, time.perf_counter() - started, sort,
                        {kind.source: [found.name for found in kind.found] for kind in kinds})
