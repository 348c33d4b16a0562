"""A share of replay held in memory: its settled requests counted at once, the others fed in time order.

A share (``shards``) whose input fits in its part of ``join_memory_mb`` (``fits``) reads all its
records first, as columns (``core.columns``; a line they refuse is read one by one, into a record or
a dead letter). The engine counts the requests that their own records settle as arrays
(``Engine.take_settled``: for a backtest, nearly all of them), and the others go through it one by
one in timestamp order, with event time moved to the settled records' times in between
(``Engine.ticks``), so that its sweeps, and the final partials they emit, fall where receiving every
record would put them. The counts, sweeps and partials are those of feeding every record
(``tests/unit/core/test_settled.py``, and the shard tests against one process).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence
from operator import itemgetter
from typing import TYPE_CHECKING, Any

import numpy as np

from stream.core.columns import LabelColumns, PredictionColumns, labels_from_json, predictions_from_json
from stream.core.engine import Engine
from stream.core.records import Label, Prediction
from stream.replay import parts
from stream.replay.occupancy import Occupancy
from stream.replay.progress import Progress

if TYPE_CHECKING:
    from stream.replay import Event, _Inputs
    from stream.replay.output import Outbox

__all__ = ["feed_all", "fits", "interleaved"]

CHUNK_LINES = 16_384  # lines decoded at a time, about (and held as bytes meanwhile: see ``exchange.AHEAD_CHUNKS``)


def fits(kinds: list[_Inputs], processes: int) -> bool:
    """Whether the inputs are small enough to be held in memory by one of ``processes`` replaying
    at once (``parts.share_bytes``: about twice their size within its part of ``join_memory_mb``)."""
    return sum(kind.held_bytes for kind in kinds) <= parts.share_bytes(kinds[0].config.join_memory_mb, processes)


def feed_all(kinds: list[_Inputs], engine: Engine, sink: Outbox, files: list[list[tuple[str, bool]]] | None,
             progress: Progress) -> None:
    """Every record of the share's inputs through ``engine`` (see the module), then the end of input."""
    from stream.replay import FEED_EVENTS, receive

    columns = [_columns(kind, engine, progress) for kind in kinds]
    for kind in kinds:
        if kind.exchange is not None:  # the other process has all it needs from this one: let it go on
            kind.exchange.close()
    max_future_s = kinds[0].config.max_future_s
    for kind, found in zip(kinds, columns, strict=True):
        if max_future_s > 0:  # every record counts (see ``shards.Occupancy``), sampled or not
            kind.occupancy = Occupancy(max_future_s)
            kind.occupancy.note(found.timestamps)
    columns = list(engine.sampled(*columns))  # type: ignore[arg-type]
    taken = engine.take_settled(*columns)  # type: ignore[arg-type]
    rest: list[Event] = []
    for number, (found, mask) in enumerate(zip(columns, taken, strict=True)):
        rows, timestamps = found.rows, found.timestamps.tolist()
        at = np.flatnonzero(~mask).tolist()
        records: Sequence[Prediction | Label] = found.records(at)
        rest += [(timestamps[i], number, rows[i], record) for i, record in zip(at, records, strict=True)]
    rest.sort(key=itemgetter(0, 1, 2))
    ticks = engine.ticks(np.concatenate([found.timestamps[mask] for found, mask in zip(columns, taken, strict=True)]))
    del columns
    for item in interleaved(rest, ticks, FEED_EVENTS):
        if isinstance(item, float):
            engine.observe(item)
            if engine.metric_records:  # the windows its sweep made final: written as they come
                sink.drain(engine)
        else:
            receive(engine, item, sink, files, progress)
    engine.finish()
    sink.drain(engine)


def _columns(kind: _Inputs, engine: Engine, progress: Progress) -> PredictionColumns | LabelColumns:
    """The share's records of one kind as columns (see ``core.columns``), decoded ``CHUNK_LINES``
    at a time; a row they refuse is read one by one, into a record or a dead letter with the reason."""
    decode = predictions_from_json if kind.kind == 0 else labels_from_json
    parts: list[Any] = []
    records: list[Prediction | Label] = []
    at: list[int] = []

    def decoded(lines: list[bytes], sequences: list[int]) -> None:
        found, refused = decode(lines, sequences, kind.config.max_record_bytes)
        parts.append(found)
        for i in refused:
            if (record := kind.record(sequences[i], lines[i], engine)) is not None:
                records.append(record)
                at.append(sequences[i])

    lines: list[bytes] = []
    sequences: list[int] = []
    for index in range(len(kind.found)):
        lines_only = kind.found[index].format == "jsonl" and kind.found[index].path is not None
        for numbers, raws in kind.owned_chunks(index, progress):
            if lines_only or set(map(type, raws)) == {bytes}:  # JSON lines (as a JSONL file's every row is)
                lines += raws
                sequences += numbers
            else:
                for sequence, raw in zip(numbers, raws, strict=True):
                    if type(raw) is bytes:
                        lines.append(raw)
                        sequences.append(sequence)
                    elif (record := kind.record(sequence, raw, engine)) is not None:
                        records.append(record)
                        at.append(sequence)
            if len(lines) >= CHUNK_LINES:
                decoded(lines, sequences)
                lines, sequences = [], []
    decoded(lines, sequences)
    found = type(parts[0]).joined(parts)
    found.add(at, records)
    return found  # type: ignore[no-any-return]


def interleaved(events: list[Event], ticks: list[float], batch: int) -> Iterator[list[Event] | float]:
    """``events`` (in time order) in batches of at most ``batch``, with each of ``ticks`` (in time
    order) where it falls: after the events before it."""
    times = [e[0] for e in events]
    start = 0
    for tick in ticks:
        end = bisect_left(times, tick, start)
        for at in range(start, end, batch):
            yield events[at:min(end, at + batch)]
        start = end
        yield tick
    for at in range(start, len(events), batch):
        yield events[at:at + batch]
