"""The join agent's state and handlers, independent of how faust delivers messages.

Each join partition takes the records of its requests (``stream.kafka.routing``): from its own
partition of each co-partitioned input, and those forwarded on the repartition topic. Its only
durable state is a changelog-backed table, a log of *batches* per join partition: the raw records
its engine took in (each model's first prediction and the first label of each request; no duplicate),
one table write per flush. Each join partition's core :class:`Engine` is a pure function of its
batches: after a start, a crash or a rebalance it is rebuilt by feeding them back, to its latest
save if it has one (:mod:`stream.kafka.stored`, :mod:`stream.kafka.checkpoints`). Offsets are
committed only up to messages whose batch is written (or, forwarded, handed to the producer), so
a record missing from the table is read again from Kafka (none lost), and a replayed one is a
duplicate to the rebuilt engine (none counted twice). Each engine publishes the *absolute* state
of its changed windows ("partials", keyed by model), then the worker its partitions' watermarks
(a heartbeat), which :mod:`stream.kafka.merge_agent` merges.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import secrets
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from typing import Any

import orjson

from stream.config import Config
from stream.core.clock import future_reason
from stream.core.engine import Engine
from stream.core.health import Health
from stream.core.records import Prediction, raw_text
from stream.core.spill import StoreStatus, remove_orphans
from stream.core.wire import label_from_json, prediction_from_json
from stream.errors import InvalidRecord
from stream.kafka.checkpoints import FOLDER, Checkpoints
from stream.kafka.cumulative import engine_windows
from stream.kafka.event_time import EventTimes
from stream.kafka.formats import Heartbeat, Pairs, Partial, encode
from stream.kafka.intake import Queue, Unsaved
from stream.kafka.routing import (
    HEARTBEAT,
    KINDS,
    Forwarding,
    forwarded,
    heartbeat,
    partition_of,
    read_heartbeat,
    source_name,
)
from stream.kafka.stored import SOURCES, Stored

__all__ = ["SAVE_BYTES", "Join", "Output"]

log = logging.getLogger("mlmon.worker")

SAVE_BYTES = 256 * 1024  # a partition writes its batch at this size, or at the next flush
# A partition's engine takes this many times the limits (a bound on its memory): the worker applies
# the limits themselves where every partition's figures meet (kafka.registry).
ENGINE_GUARD = 4
Output = tuple[str, bytes | None, bytes]  # (topic, key, value)


class Join(Stored):
    """The join agent's state and handlers, independent of how faust delivers messages.

    The batch table is a log: each write (a *batch*) holds the raw records the partition's engine
    took in since the last one, so a record costs no table read or write of its own. A message
    counts as handled (its offset may be committed) only once its batch is written, or, for a
    record forwarded to its request's partition, once it is handed to the producer.
    """

    def __init__(self, config: Config, inputs: dict[str, int] | None = None) -> None:
        self.config = config
        self.engine_config = dataclasses.replace(config, windows=engine_windows(config.windows),
                                                 join_store_dir=config.join_store_dir or config.data_dir)
        remove_orphans(self.engine_config.join_store_dir)  # what a killed worker's joins left on disk
        self.engines: dict[int, Engine] = {}
        self.max_window_s = max((w.size_s for w in self.engine_config.windows), default=0)
        self.stale = True  # rebuild the engines from the table before the next message
        inputs = inputs or {source: config.partitions for source in SOURCES}  # partitions per input
        own = {source for source, n in inputs.items() if n == config.partitions}  # co-partitioned inputs
        self.times = EventTimes([source_name(s, p) for s, n in inputs.items() for p in range(n)], own)
        self.saved_marks: dict[str, float] = {}  # "predictions/3" -> event time, as the table has it
        self.unsaved: dict[int, Unsaved] = {}
        self.queued: dict[int, Queue] = {}  # records for the engines, fed at once (see ``settle``)
        self.offsets: dict[tuple[str, int], int] = {}  # last offset handled per input topic-partition
        self.lag: dict[tuple[str, int], int] = {}  # records behind the high-water mark (set by the worker)
        self.prune_due: dict[int, list[tuple[str, int]]] = defaultdict(list)
        self.future_limit = -math.inf  # records stamped later are checked against the wall clock
        self.forwarding = Forwarding()
        self.forwards: list[tuple[int, bytes, bytes]] = []  # (partition, key, value) for the repartition topic
        self.passed: dict[tuple[str, int], list[int]] = {}  # offsets of records all forwarded: [first, last]
        self.intake = self._new_engine()  # counts and dead-letters records of inputs that are not co-partitioned
        self.numbers: dict[int, int] = {}
        self.floors: dict[int, int] = {}
        self.writer = secrets.token_hex(4)
        self.checkpoints = Checkpoints(os.path.join(self.engine_config.join_store_dir, FOLDER, config.app_id),
                                       config.checkpoint_interval_s)

    def _new_engine(self) -> Engine:
        return Engine(self.engine_config, clock=time.time, emit_partials=True, limits_factor=ENGINE_GUARD,
                      memory_share=1 / self.engine_config.partitions)  # a worker with every partition: all of it

    def engine(self, partition: int) -> Engine:
        engine = self.engines.get(partition)
        if engine is None:
            engine = self.engines[partition] = self._new_engine()
        return engine

    def watermark(self, partition: int) -> float:
        """A join partition's event time (see :mod:`stream.kafka.event_time`)."""
        return self.times.watermark(partition)

    def handle(self, topic: str, partition: int, offset: int, raw: bytes | None) -> None:
        """One message: ``handle_many`` of it alone."""
        self.handle_many(topic, partition, offset, [raw])

    def handle_many(self, topic: str, partition: int, first: int, raws: Sequence[bytes | None]) -> None:
        """Messages ``first``, ``first + 1``, ... of one topic-partition, in offset order: each
        record validated and queued for its partition's engine (kept for the next save), or for
        the partition of its request (``forwards``). Bad input is dead-lettered; a record whose
        handling fails (a bug) is logged and dead-lettered, and the others go on."""
        config = self.config
        if topic == config.repartition_topic:
            unsaved = self._unsaved(partition)
            for offset, raw in enumerate(raws, first):
                unsaved.note(topic, offset, offset)
                try:
                    self._handle_forwarded(partition, offset, raw or b"")
                except Exception as exc:
                    self._internal_error(self.engine(partition), "", raw, exc, topic, partition, offset)
            return
        if not raws:
            return
        last = first + len(raws) - 1
        source = self._source(topic)
        own = self.takes_in(topic)
        if own:
            self._unsaved(partition).note(topic, first, last)
        else:
            self._pass(topic, partition, first, last)
        self.offsets[(topic, partition)] = last
        engine = self.engine(partition) if own else self.intake
        decode = prediction_from_json if source == "predictions" else label_from_json
        max_bytes, partitions, forwards, kind = config.max_record_bytes, config.partitions, self.forwards, KINDS[source]
        queue = self._queue(partition) if own else None
        sampling = not engine.sampler.every
        latest = -math.inf
        for offset, raw in enumerate(raws, first):
            raw = raw or b""
            try:
                try:
                    record = decode(raw, max_bytes)
                    ts = record.timestamp
                    if ts > self.future_limit and self._from_the_future(ts):
                        raise InvalidRecord(future_reason(ts, time.time(), config.max_future_s, "the worker's clock")
                                            or "")
                except InvalidRecord as exc:
                    self._refuse(engine, source, raw, str(exc), topic, partition, offset)
                    continue
                if ts > latest:
                    latest = ts
                if sampling and engine.sampler.leaves_out(record, engine.health):
                    continue  # neither forwarded nor queued (its time still moves the partition's)
                request_id = record.request_id
                right = partition_of(request_id, partitions)
                if right != partition or queue is None:
                    self.forwarding.count(source, partition, right, request_id)
                    forwards.append((right, request_id.encode(), kind + raw))
                else:
                    queue.add(record, raw, (topic, partition, offset))
            except Exception as exc:
                self._internal_error(engine, source, raw, exc, topic, partition, offset)
        if latest > -math.inf:  # (a maximum: as each record's time read in turn)
            self.times.read(source, partition, latest)

    @staticmethod
    def _internal_error(engine: Engine, source: str, raw: bytes | None, exc: Exception, topic: str, partition: int,
                        offset: int) -> None:
        """A message whose handling raised: logged, and dead-lettered with where it came from."""
        log.error("failed on %s[%s]@%s", topic, partition, offset, exc_info=exc)
        engine.dead_letter(source, raw_text(raw), "internal error (see worker log)", topic=topic, partition=partition,
                           offset=offset)

    def _handle_forwarded(self, partition: int, offset: int, raw: bytes) -> None:
        """A record forwarded to this partition, or a heartbeat (see :mod:`stream.kafka.routing`)."""
        topic = self.config.repartition_topic
        engine = self.engine(partition)
        try:
            if raw[:1] == HEARTBEAT:
                self.times.hear(partition, *read_heartbeat(raw[1:]))
                return
            source, body = forwarded(raw)
        except (KeyError, IndexError, ValueError):  # written there by something else than a worker
            engine.dead_letter("", raw_text(raw), "not a record of mlmon's repartition topic",
                               topic=topic, partition=partition, offset=offset)
            return
        try:
            record = (prediction_from_json if source == "predictions" else label_from_json)(
                body, self.config.max_record_bytes)
        except InvalidRecord as exc:
            self._refuse(engine, source, body, str(exc), topic, partition, offset)
            return
        self._queue(partition).add(record, body, (topic, partition, offset))

    @staticmethod
    def _refuse(engine: Engine, source: str, raw: bytes, reason: str, topic: str, partition: int, offset: int
                ) -> None:
        """A record that is not valid: dead-lettered on ``engine`` with the reason."""
        rid = _request_id(raw)
        where = {"request_id": rid[:256]} if isinstance(rid, str) else {}
        engine.dead_letter(source, raw_text(raw), reason, topic=topic, partition=partition, offset=offset, **where)

    def _queue(self, partition: int) -> Queue:
        queue = self.queued.get(partition)
        if queue is None:
            queue = self.queued[partition] = Queue()
        return queue

    def settle(self, partition: int | None = None) -> None:
        """Feed the queued records to their partition's engine (``partition``, else every one), a
        batch at a time (``Engine.take_many``); what it took in is kept for the next save. A
        record whose handling fails is logged and dead-lettered, and the others go on."""
        for at in [partition] if partition is not None else list(self.queued):
            queue = self.queued.pop(at, None)
            if queue is None:
                continue
            engine = self.engine(at)
            failed = functools.partial(self._failed, engine, queue)
            try:
                taken = engine.take_many(queue.records, queue.where, failed)
            except Exception as exc:  # a bug beyond one record's handling: every record of the batch says so
                for i in range(len(queue.records)):
                    failed(i, exc)
                continue
            unsaved = self.unsaved.get(at) or self._unsaved(at)
            for record, raw, took in zip(queue.records, queue.raws, taken, strict=True):
                if took:
                    (unsaved.predictions if type(record) is Prediction else unsaved.labels).append(raw)
                    unsaved.size += len(raw)
                    if record.timestamp > unsaved.last_ts:
                        unsaved.last_ts = record.timestamp

    @staticmethod
    def _failed(engine: Engine, queue: Queue, i: int, exc: Exception) -> None:
        """A queued record whose handling raised: logged, and dead-lettered with where it came from."""
        source = "predictions" if type(queue.records[i]) is Prediction else "labels"
        Join._internal_error(engine, source, queue.raws[i], exc, *queue.origins[i])

    def _unsaved(self, partition: int) -> Unsaved:
        unsaved = self.unsaved.get(partition)
        if unsaved is None:
            unsaved = self.unsaved[partition] = Unsaved()
        return unsaved

    def _pass(self, topic: str, partition: int, first: int, last: int) -> None:
        """Messages of an input that is not co-partitioned: all their records are forwarded (or
        dead-lettered), so they are handled once the forwards are handed to the producer."""
        span = self.passed.get((topic, partition))
        if span is not None and span[1] + 1 == first:
            span[1] = last
        else:
            self.passed[(topic, partition)] = [first, last]

    def _from_the_future(self, ts: float) -> bool:
        """Whether ``ts`` is more than ``max_future_s`` ahead of the wall clock (see core.clock); the
        limit is kept, so the clock is read only for records past it."""
        max_future_s = self.config.max_future_s
        self.future_limit = time.time() + max_future_s if max_future_s > 0 else math.inf
        return ts > self.future_limit

    def queued_records(self, partition: int) -> int:
        """Records waiting for the partition's engine (``settle``)."""
        queue = self.queued.get(partition)
        return 0 if queue is None else len(queue.records)

    def unsaved_bytes(self, partition: int) -> int:
        """What the next save would write at most: taken in, or queued (not all may be taken)."""
        unsaved, queue = self.unsaved.get(partition), self.queued.get(partition)
        return (0 if unsaved is None else unsaved.size) + (0 if queue is None else queue.size)

    def outputs(self) -> list[Output]:
        """(topic, key, value): partials keyed by model, and dead letters, since the last call."""
        config = self.config
        self.settle()
        out = self.intake_outputs()
        for partition, engine in self.engines.items():
            for partial in engine.metric_records:
                message = encode(Partial(partition=partition, partial=partial))
                out.append((config.partials_topic, partial["model"].encode(), message))
            for dead in engine.dead_letters:
                out.append((config.dead_letters_topic, None, orjson.dumps(dead)))
            if engine.detectors.rules:  # the pairs of detector rules, for their model's merger
                for model, pairs in engine.detectors.take():
                    message = encode(Pairs(partition=partition, model=model, pairs=pairs))
                    out.append((config.partials_topic, model.encode(), message))
            engine.metric_records.clear()
            engine.dead_letters.clear()
        return out

    def intake_outputs(self) -> list[Output]:
        """Dead letters of the inputs that are not co-partitioned, since the last call."""
        out: list[Output] = [(self.config.dead_letters_topic, None, orjson.dumps(d)) for d in self.intake.dead_letters]
        self.intake.dead_letters.clear()
        return out

    def advance(self, inputs: Iterable[tuple[str, int]], partitions: Iterable[int], now: float) -> None:
        """Mark idle the input partitions read here (``inputs``: topic, partition) that got nothing
        for ``idle_timeout_s``, then move each join partition's watermark (see
        :mod:`stream.kafka.event_time`) and tell its engine."""
        offsets: dict[str, int | None] = {}
        lag: dict[str, int] = {}
        for topic, partition in inputs:
            name = source_name(self._source(topic), partition)
            offsets[name] = self.offsets.get((topic, partition))
            lag[name] = self.lag.get((topic, partition), 0)
        self.times.refresh_idle(offsets, lag, now, self.config.idle_timeout_s)
        self.settle()  # the records read before the watermark moves are counted before it
        for partition, low in self.times.advance(partitions).items():
            self.engine(partition).observe(low)

    def forward_heartbeat(self, inputs: Iterable[tuple[str, int]]) -> bytes:
        """How far the input partitions read here were read, for every repartition partition: sent
        after the records forwarded until now."""
        return heartbeat(*self.times.beat(source_name(self._source(t), p) for t, p in inputs))

    def _source(self, topic: str) -> str:
        return "predictions" if topic == self.config.predictions_topic else "labels"

    def takes_in(self, topic: str) -> bool:
        """Whether a partition of ``topic`` feeds the join partition of the same number (the
        repartition topic, or a co-partitioned input), rather than only forwarding its records."""
        return topic == self.config.repartition_topic or self._source(topic) in self.times.own

    def heartbeat(self, assigned: Iterable[int] = ()) -> bytes | None:
        """Each owned partition's watermark (None: not known yet) and those idle, sent to every
        merger partition after the partials: windows close on them, and changed windows are
        merged at them."""
        owned = set(self.engines) | set(assigned)
        if not owned:
            return None
        marks = {p: self.watermark(p) for p in sorted(owned)}
        return encode(Heartbeat(watermarks={str(p): m if math.isfinite(m) else None for p, m in marks.items()},
                                idle=self.times.idle_partitions(sorted(owned))))

    def totals(self) -> tuple[Health, tuple[int, int], float]:
        """Health and pending counts summed over this process's partitions, and the lowest watermark."""
        self.settle()
        total = Health()
        pending = [0, 0]
        for engine in [*self.engines.values(), self.intake]:
            for name, value in asdict(engine.health).items():
                if name == "label_lag_buckets":
                    total.label_lag_buckets = [a + b for a, b in zip(total.label_lag_buckets, value, strict=True)]
                else:
                    setattr(total, name, getattr(total, name) + value)
            for i, n in enumerate(engine.pending()):
                pending[i] += n
        watermark = min((self.watermark(p) for p in self.engines), default=-math.inf)
        return total, (pending[0], pending[1]), watermark

    def store_status(self) -> StoreStatus:
        """What this process's partitions hold on disk, summed (``join_memory_mb``)."""
        total = StoreStatus()
        for engine in self.engines.values():
            total.add(engine.store_status())
        return total

    def health(self) -> dict[str, Any]:
        """Where every consumed record went, summed over this process's partitions."""
        total, pending, _ = self.totals()
        health = {k: v for k, v in total.as_dict().items() if k != "label_lag_buckets"}
        store = self.store_status()
        health.update(repartitioned=dict(self.forwarding.counts),
                      pending_predictions=pending[0], pending_labels=pending[1],
                      pending_on_disk_predictions=store.pending[0], pending_on_disk_labels=store.pending[1],
                      join_store_bytes=store.disk_bytes,
                      balance=total.balance(*pending), partitions=sorted(self.engines),
                      app_id=self.config.app_id, pid=os.getpid(), emitted_at=time.time())
        return health


def _request_id(raw: bytes) -> Any:
    """A refused record's request id, when it has one, for its dead letter."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return obj.get("request_id") if isinstance(obj, dict) else None
