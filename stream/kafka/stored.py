"""The join agent's durable side: what each partition's engine took in, written to the batch table
(``save``), forgotten once final (``prune``), saved whole now and then (``checkpoint``, see
:mod:`stream.kafka.checkpoints`), and fed back into engines after a start or a rebalance
(``rebuild``). A mixin of :class:`stream.kafka.join_agent.Join`, whose state it shares.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections import defaultdict
from typing import Any

import orjson

from stream.config import Config
from stream.core.engine import Engine
from stream.core.snapshot import restore_rolling, rolling_snapshot
from stream.core.windows import final_at
from stream.kafka.batches import stored_in_order
from stream.kafka.checkpoints import Checkpoints, Reflects
from stream.kafka.event_time import EventTimes
from stream.kafka.formats import (
    BATCH_KEY,
    ROLLING_KEY,
    WATERMARK_KEY,
    BatchKey,
    batch_json,
    batch_key,
    batch_value,
    compressed,
    read_batch_key,
)
from stream.kafka.intake import Queue, Unsaved
from stream.kafka.routing import source_name

__all__ = ["MARKS", "PRUNE_SLACK_S", "REBUILD_CHUNK", "SOURCES", "Stored"]

log = logging.getLogger("mlmon.worker")

SOURCES = ("predictions", "labels")
MARKS = (*SOURCES, "low")  # a partition's stored event times: each input's, and the partition's
PRUNE_SLACK_S = 60.0  # a batch is kept a sweep longer than its records' last window is open
REBUILD_CHUNK = 8192  # stored records decoded and taken in at a time by a rebuild (see batches.stored_in_order)


class Stored:
    """``Join``'s batches, saves and rebuilds."""

    config: Config
    engine_config: Config
    engines: dict[int, Engine]
    max_window_s: float
    stale: bool
    times: EventTimes
    saved_marks: dict[str, float]
    unsaved: dict[int, Unsaved]
    queued: dict[int, Queue]
    prune_due: dict[int, list[tuple[str, int]]]
    numbers: dict[int, int]  # each partition's latest batch number (see batches.batch_key)
    floors: dict[int, int]  # each partition's latest batch number at the last rebuild
    writer: str  # this join's id in its batches' keys, new at each rebuild
    checkpoints: Checkpoints

    def engine(self, partition: int) -> Engine:
        raise NotImplementedError

    def watermark(self, partition: int) -> float:
        raise NotImplementedError

    def settle(self, partition: int | None = None) -> None:
        raise NotImplementedError

    def rebuild(self, table: Any) -> None:
        """Each partition's engine as it was: its latest save loaded (``checkpoints``) and fed the
        batches stored after it, else a fresh engine fed every stored record; in timestamp order,
        with no watermark (so none is judged stale), then moved to the watermark the partition had
        reached. What was not saved yet is dropped: its messages were not committed, so Kafka
        delivers them again. One partition at a time, so only one partition's records are ever
        decoded at once; a batch is read only to be fed (its number and latest time are in its key)."""
        self.times.clear()
        self.queued.clear()  # as the unsaved ones: their messages were not committed
        self.saved_marks = {}
        keys: dict[int, list[tuple[str, BatchKey]]] = defaultdict(list)
        snapshots: dict[int, bytes] = {}
        self.prune_due.clear()
        self.unsaved.clear()
        self.numbers.clear()
        for key in table:  # keys only: a batch's value is read when it is fed
            if key.startswith(WATERMARK_KEY):
                name = key[len(WATERMARK_KEY):]
                self.saved_marks[name] = mark = float(orjson.loads(table[key]))
                self.times.restore(name, mark)
            elif key.startswith(BATCH_KEY):
                parts = read_batch_key(key)
                keys[parts.partition].append((key, parts))
            elif key.startswith(ROLLING_KEY):
                snapshots[int(key[len(ROLLING_KEY):])] = table[key]
        self.engines = {}
        stored = loaded = 0
        for partition in sorted(set(keys) | set(snapshots)):
            found = keys.pop(partition, [])
            saved = self.checkpoints.load(partition, self.engine_config) if found else None
            feed = []
            for key, parts in found:
                self.numbers[partition] = max(self.numbers.get(partition, 0), parts.number)
                if saved is None or not saved[1].covers(parts):
                    feed.append(key)
                elif parts.latest_ts is not None:
                    self._schedule_prune(key, parts.latest_ts, partition)
                else:  # a batch of a version that kept its time only inside it
                    self._schedule_prune(key, stored_in_order([table[key]], 1)[0][0], partition)
            latest, chunks = stored_in_order([table[key] for key in feed], REBUILD_CHUNK)
            for key, ts in zip(feed, latest, strict=True):
                self._schedule_prune(key, ts, partition)
            if saved is not None:
                engine = self.engines[partition] = saved[0]
                loaded += 1
            else:
                engine = self.engine(partition)
                if partition in snapshots:  # pairs of pruned batches
                    restore_rolling(engine, orjson.loads(batch_json(snapshots[partition])))
            for records in chunks:
                stored += len(records)
                engine.take_many(records)
            watermark = self.watermark(partition) - self.config.watermark_lag_s
            if math.isfinite(watermark) and watermark > engine.watermark:
                engine.resume(watermark)
            engine.flush()  # publish every changed window's state once more: absolute partials, so harmless
            engine.dead_letters.clear()  # stored records were valid
        self.floors = dict(self.numbers)  # every batch stored now is in the engines
        self.writer = secrets.token_hex(4)
        self.stale = False
        log.info("engines rebuilt from %d stored records in %d partitions (%d from a saved engine)", stored,
                 len(self.engines), loaded)

    def checkpoint(self, now: float) -> None:
        """Save one partition's engine if one is due (see ``checkpoints``): called right after the
        flush wrote every partition's batch and drained every output."""
        partition = self.checkpoints.due({p: n for p, n in self.numbers.items() if p in self.engines}, now)
        if partition is not None:
            reflects = Reflects(self.floors.get(partition, 0), self.writer, self.numbers[partition])
            self.checkpoints.take(partition, reflects, self.engines[partition], now)

    def _schedule_prune(self, key: str, ts: float, partition: int) -> None:
        # Keep a batch until every window of its latest record is final, then forget it.
        deadline = final_at(ts + self.max_window_s, self.config.join_ttl_s) + PRUNE_SLACK_S
        if math.isfinite(deadline):
            self.prune_due[int(deadline // 60)].append((key, partition))

    def save(self, table: Any, partition: int) -> list[list[Any]]:
        """Write what the partition took in since the last save as one batch, and its watermarks;
        return the [topic, first, last] offsets of the messages handled meanwhile, now safe to commit.
        (Inside faust this must run in that partition's event context: see ``in_partition``.)"""
        self.settle(partition)
        unsaved = self.unsaved.pop(partition, None) or Unsaved()
        if unsaved.predictions or unsaved.labels:
            number = self.numbers[partition] = max(time.time_ns(), self.numbers.get(partition, 0) + 1)
            key = batch_key(partition, number, self.writer, unsaved.last_ts)
            table[key] = batch_value(unsaved.predictions, unsaved.labels)
            self._schedule_prune(key, unsaved.last_ts, partition)
        times = self.times
        for source in MARKS:
            if source != "low" and source not in times.own:
                continue  # read here, but not this partition's own input: nothing to restore
            name = source_name(source, partition)
            mark = times.watermark(partition) if source == "low" else times.read_mark(source, partition)
            if mark != -math.inf and mark != self.saved_marks.get(name):
                table[f"{WATERMARK_KEY}{name}"] = orjson.dumps(mark)
                self.saved_marks[name] = mark
        return unsaved.offsets

    def prune(self, table: Any, partition: int) -> int:
        """Forget batches of this partition whose windows are all final (changelog deletes). Rolling
        windows reach further back than any timed window: their pairs are stored first, whole."""
        horizon = int(self.watermark(partition) // 60)
        gone = []
        for bucket in [b for b in self.prune_due if b < horizon]:
            keep = []
            for key, part in self.prune_due.pop(bucket):
                if part != partition:
                    keep.append((key, part))
                elif key in table:
                    gone.append(key)
            if keep:
                self.prune_due[bucket].extend(keep)
        if gone and any(not w.timed for w in self.engine_config.windows):
            self.settle(partition)
            snapshot = rolling_snapshot(self.engine(partition))
            table[f"{ROLLING_KEY}{partition}"] = compressed(orjson.dumps(snapshot))
        for key in gone:
            del table[key]
        return len(gone)
