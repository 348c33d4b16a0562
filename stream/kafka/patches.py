"""Patches to faust-streaming 0.15 internals, each for a fault or a cost (see docs/worker.md).
Each is applied once, by :func:`stream.kafka.worker.build_app`.

``UPSTREAM`` names, per patch, every faust and aiokafka function the patch replaces, copies or
relies on. ``tests/unit/kafka/test_faust_guard.py`` fingerprints their source in the pinned
versions (``pyproject.toml``) and fails, naming the patch, when any of them changes: re-read that
code against the patch before moving a pin (``make faust-check`` runs the guard and the chaos suite).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast

from faust.streams import _current_event
from faust.transport.consumer import CONSUMER_FETCHING, Consumer
from faust.transport.producer import ProducerBuffer
from faust.types import TP

from stream.kafka.offsets import Handled, rewinds

__all__ = [
    "RAW_TOPICS",
    "UPSTREAM",
    "Handler",
    "SendRecords",
    "batch_sender",
    "commit_no_further_than_handled",
    "complete_producer_flushes",
    "deliver_without_tasks",
    "delivery_check",
    "direct_handlers",
    "in_partition",
    "raw_records_for_direct_topics",
    "table_writable",
    "tune_fetches",
    "tune_rocksdict_stores",
]

log = logging.getLogger("mlmon.worker")


_CONSUMER = "faust.transport.consumer:Consumer"
_BUFFER = "faust.transport.producer:ProducerBuffer"
_ROCKSDB = "faust.stores.rocksdb:RocksDBOptions"
_AIOKAFKA = "aiokafka.consumer.consumer:AIOKafkaConsumer"
_TABLE = "faust.tables.base:Collection"
UPSTREAM: dict[str, tuple[str, ...]] = {
    "complete_producer_flushes": (
        f"{_BUFFER}.flush", f"{_BUFFER}._send_pending", f"{_BUFFER}._handle_pending", f"{_BUFFER}.put",
        f"{_BUFFER}.size",
    ),
    "tune_rocksdict_stores": (f"{_ROCKSDB}.__init__", f"{_ROCKSDB}.open", f"{_ROCKSDB}.as_options"),
    "tune_fetches": (
        "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread._create_worker_consumer",
        f"{_AIOKAFKA}.__init__", f"{_AIOKAFKA}.start",
    ),
    "commit_no_further_than_handled": (
        f"{_CONSUMER}._new_offset", f"{_CONSUMER}._filter_tps_with_pending_acks", f"{_CONSUMER}.commit",
        f"{_CONSUMER}._commit_offsets", f"{_CONSUMER}.perform_seek", f"{_CONSUMER}.ack",
    ),
    "deliver_without_tasks": (
        f"{_CONSUMER}._drain_messages", f"{_CONSUMER}.getmany", f"{_CONSUMER}._wait_next_records",
        f"{_CONSUMER}._add_gap", f"{_CONSUMER}._reset_state", f"{_CONSUMER}.seek",
        "faust.transport.conductor:ConductorCompiler.build", "faust.transport.conductor:Conductor.acks_enabled_for",
    ),
    "raw_records_for_direct_topics": (
        "aiokafka.consumer.fetcher:PartitionRecords._consumer_record",
        "aiokafka.consumer.fetcher:PartitionRecords.__next__",
    ),
    "batch_sender": (
        "faust.transport.drivers.aiokafka:Producer._ensure_producer",
        "aiokafka.producer.producer:AIOKafkaProducer.create_batch",
        "aiokafka.producer.producer:AIOKafkaProducer.send_batch",
        "aiokafka.producer.message_accumulator:BatchBuilder.append",
    ),
    "in_partition": ("faust.streams:current_event", f"{_TABLE}.partition_for_key", f"{_TABLE}._send_changelog"),
    "table_writable": (f"{_TABLE}._verify_source_topic_partitions",),
}


def complete_producer_flushes() -> None:
    """Make faust's ``ProducerBuffer.flush`` hand every buffered record to the Kafka producer.

    faust 0.15 flushes that buffer (table changelog records) before it commits offsets, but its
    flush returns once 0.1 s pass without a send (under load, while the producer waits for room),
    counts neither the record being handed over nor, while the worker stops, anything (nothing
    drains the buffer then): offsets were committed past records whose changelog entries were
    never sent, lost when the partition moved or the worker died.
    """
    if getattr(ProducerBuffer.flush, "_mlmon", False):
        return
    send_pending = ProducerBuffer._send_pending

    async def counted_send(self: ProducerBuffer, fut: Any) -> None:
        self.mlmon_in_flight = getattr(self, "mlmon_in_flight", 0) + 1  # type: ignore[attr-defined]
        try:
            await send_pending(self, fut)
        finally:
            self.mlmon_in_flight -= 1  # type: ignore[attr-defined]

    async def flush(self: ProducerBuffer) -> None:
        while self.size or (getattr(self, "mlmon_in_flight", 0) and not self.should_stop):
            if self.should_stop:  # its sending task has ended: send the rest from here
                await self._send_pending(self.pending.get_nowait())
            else:
                await asyncio.sleep(0.001)

    flush._mlmon = True  # type: ignore[attr-defined]
    ProducerBuffer._send_pending = counted_send  # type: ignore[method-assign]
    ProducerBuffer.flush = flush  # type: ignore[method-assign]


def tune_rocksdict_stores() -> None:
    """Apply three rocksdict settings that faust 0.15 accepts in a table's options but passes to
    python-rocksdb only (``RocksDBOptions.extra_options``):

    - ``min_blob_size``: values at least this large go to blob files, which compaction does not
      rewrite (only their small references move between levels);
    - ``compression="none"``: no compression at flush and compaction;
    - ``wal=False``: no write-ahead log.

    The worker's batches (256 KiB of records, about 64 KiB once compressed) are written once, read
    once at a rebuild, and deleted when their windows are final. rocksdb's default compaction
    rewrote and recompressed each one several times: 5.4 s of CPU, in background threads, of the
    single worker's 36 s for 1,000,000 pairs (before the batches were compressed).
    Without the log, a crash loses what was not flushed to disk yet. rocksdb keeps a prefix of the
    writes, and faust writes a table's changelog offset after the data it covers, so recovery
    replays the changelog from the offset the store kept, as it does for any gap.
    """
    from faust.stores.rocksdb import RocksDBOptions

    if getattr(RocksDBOptions.as_options, "_mlmon", False):
        return
    import rocksdict

    as_options, open_db = RocksDBOptions.as_options, RocksDBOptions.open

    def tuned_options(self: RocksDBOptions) -> Any:
        options = as_options(self)
        if not self.use_rocksdict:
            return options
        extra = self.extra_options
        if extra.get("compression") == "none":
            options.set_compression_type(rocksdict.DBCompressionType.none())
        if extra.get("min_blob_size") is not None:
            options.set_enable_blob_files(True)
            options.set_min_blob_size(int(extra["min_blob_size"]))
            options.set_enable_blob_gc(True)  # rewrite old blob files that are mostly deleted values
        return options

    def tuned_open(self: RocksDBOptions, path: Any, *, read_only: bool = False) -> Any:
        db = open_db(self, path, read_only=read_only)
        if self.use_rocksdict and self.extra_options.get("wal") is False:
            write_options = rocksdict.WriteOptions()
            setattr(write_options, "disable_wal", True)  # a property (its stub says a method)  # noqa: B010
            db.set_write_options(write_options)
        return db

    tuned_options._mlmon = True  # type: ignore[attr-defined]
    RocksDBOptions.as_options = tuned_options  # type: ignore[method-assign]
    RocksDBOptions.open = tuned_open  # type: ignore[method-assign]


def tune_fetches(max_bytes: int, max_wait_ms: int) -> None:
    """Set what faust 0.15 does not expose of aiokafka's fetches: the cap on what one fetch may
    bring over all partitions (``fetch_max_bytes``, 50 MiB by default), and how long the broker
    may hold a fetch that finds no data (``fetch_max_wait_ms``, which faust sets to 1500).

    A fetch's records stay in memory until the worker has handled them all, and the next fetch
    arrives meanwhile. With 1,000,000 pending predictions, RSS peaked at 440 bytes per prediction
    with 50 MiB fetches and 208 with 4 MiB (``benchmarks/run.py``, ``rss_peak_bytes_per_pending``).

    aiokafka has one fetch in flight per broker, and asks only for partitions with nothing left
    to hand over. So when the rest are empty, the broker holds that fetch, and the partition being
    worked through waits for it once done: with 1500 ms, each of two workers sat idle for up to a
    second at a time as its last partitions drained, and the last records waited a second more.
    """
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    create = getattr(AIOKafkaConsumerThread._create_worker_consumer, "_mlmon_unpatched",
                     AIOKafkaConsumerThread._create_worker_consumer)

    def create_tuned(self: AIOKafkaConsumerThread, transport: Any) -> Any:
        consumer = create(self, transport)
        consumer._fetch_max_bytes = max_bytes  # both read by its fetcher, created at start
        consumer._fetch_max_wait_ms = max_wait_ms
        return consumer

    create_tuned._mlmon_unpatched = create  # type: ignore[attr-defined]
    AIOKafkaConsumerThread._create_worker_consumer = create_tuned  # type: ignore[method-assign]


def commit_no_further_than_handled(handled: Handled) -> None:
    """Commit exactly what the agents handled: up to the first message not handled by this process.

    faust 0.15 acks the messages it drops from a stream while its flow is suspended (a rebalance,
    a stop) and lets a one-message gap at the head of the acked offsets through
    (``min(acked) - committed > 1``): it committed past messages the agent never saw, lost records
    Its acks are not consulted here: a message counts once its
    record is saved (``Join.save``). With no committed offset yet, the count starts at the start of
    the log, and nothing is committed until that is known. faust's acked offsets below the commit
    are forgotten, as its own ``_new_offset`` does (it forgot them even when they were not
    committed, after which that partition never committed again).
    """

    def new_offset(self: Consumer, tp: TP) -> int | None:
        start = handled.start(tp, self._committed_offset[tp])  # faust keeps None for "none yet" and for 0
        if start is None:
            return None
        reach = handled.reach(tp, start)
        acked = self._acked[tp]
        if acked and acked[0] < reach:
            below = [offset for offset in acked if offset < reach]
            acked[:] = [offset for offset in acked if offset >= reach]
            self._acked_index[tp].difference_update(below)
        return reach if reach > start else None

    def tps_to_commit(self: Consumer, topics: Any = None) -> Iterator[TP]:
        # faust looks only at partitions with acks; messages handed over directly are never acked
        for tp in set(self._acked) | set(handled.ranges):
            if topics is None or tp in topics or tp.topic in topics:
                yield tp

    Consumer._new_offset = new_offset  # type: ignore[method-assign]
    Consumer._filter_tps_with_pending_acks = tps_to_commit  # type: ignore[method-assign]


Handler = Callable[[TP, list[Any]], Awaitable[None]]  # a partition's fetched records, in offset order


def direct_handlers(app: Any) -> dict[str, Handler]:
    """Topics whose messages the fetch loop hands straight to a handler (see
    ``deliver_without_tasks``), bypassing faust's conductor and streams."""
    return cast(dict[str, Handler], app.__dict__.setdefault("_mlmon_direct", {}))


def delivery_check(consumer: Consumer) -> Callable[[TP], bool]:
    """Whether faust's conductor would hand a partition's next message to its streams without
    waiting: flow running, no rebalance holding the callback map, room in the producer buffer and
    in every stream queue of the partition (faust's ``on_message`` awaits only those). The objects
    it reads are looked up once (faust's attribute lookups cost more than the checks)."""
    app: Any = consumer.app
    suspended = consumer.suspend_flow.is_set
    flow_active = app.flow_control.is_active
    conductor = app.topics
    callback_map_locked = conductor._tp_to_callback_lock.locked
    tp_index = conductor._tp_index
    buffer = app.producer.buffer

    def cannot_block(tp: TP) -> bool:
        if suspended() or not flow_active() or callback_map_locked() or buffer.size > buffer.max_messages:
            return False
        return not any(channel.queue.full() for channel in tp_index.get(tp, ()))

    return cannot_block


def deliver_without_tasks() -> None:
    """Hand consumed messages to the streams without four asyncio tasks each, and the messages of
    direct topics (``direct_handlers``) to their handler a fetched batch at a time.

    faust 0.15's fetch loop wraps every delivery in ``wait_first(callback(message),
    suspend_flow.wait())`` (a task each for the callback, the flow, and the service's stop and
    crash events), so that a delivery blocked on a full stream queue is abandoned when a
    rebalance suspends the flow: about a quarter of the worker's time (py-spy). When nothing
    can block the delivery (see ``delivery_check``), it is awaited directly: it completes
    before anything else runs, as the wrapped one would have. Otherwise faust's way is kept.

    A direct topic's records skip faust's message, conductor, stream and event objects (and
    their sensors and acks) altogether: each partition's fetched records go to the handler as
    one list, in offset order. What faust's ``getmany`` checks per message (flow running, same
    consumer generation, partition still active) is checked before each list; the handler
    itself must skip what comes during a rebalance (the worker's ``Sequencer`` does).

    This is faust's ``Consumer._drain_messages`` and ``getmany`` with those changes, and the
    seeks asked by the ``Sequencer`` made between two fetches (a seek while a fetched batch is
    being delivered would be undone by the rest of that batch).
    """
    if getattr(Consumer._drain_messages, "_mlmon", False):
        return

    async def drain_messages(self: Consumer, fetcher: Any) -> None:  # pragma: no cover - faust's loop
        consumer_should_stop = cast(Any, self)._stopped.is_set
        fetcher_should_stop = cast(Any, fetcher)._stopped.is_set
        set_flag = self.diag.set_flag
        unset_flag = self.diag.unset_flag
        rewound = rewinds(self)
        deliver = _Delivery(self)
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                if rewound.asked and not self.app.rebalancing:
                    await rewound.seek(self)
                set_flag(CONSUMER_FETCHING)
                records, active = await self._wait_next_records(1.0)
                await self.sleep(0)
                if records is not None and not self.should_stop:
                    if self.flow_active:
                        await deliver.batch(records, active)
                    else:  # as faust's getmany does
                        try:
                            await self.perform_seek()
                        except Exception as ex:
                            self.log.warning(f"exception performing seek when flow not active {ex}")
                unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(CONSUMER_FETCHING)

    drain_messages._mlmon = True  # type: ignore[attr-defined]
    Consumer._drain_messages = drain_messages  # type: ignore[method-assign]


RAW_TOPICS: set[str] = set()  # direct topics of this process's consumers (see ``_Delivery``)


def raw_records_for_direct_topics() -> None:
    """Give the direct topics' records to their handler as aiokafka's batch reader makes them.

    aiokafka wraps every fetched record in a ``ConsumerRecord``, a dataclass of eleven fields:
    0.4 µs and 90 bytes a record, in the consumer thread that shares the GIL with the handler.
    A direct topic's handler reads only ``offset`` and ``value``, which the reader's own record
    has already, so those records are passed on as they are; other topics keep faust's path.
    """
    from aiokafka.consumer.fetcher import PartitionRecords

    if getattr(PartitionRecords._consumer_record, "_mlmon", False):
        return
    wrap = PartitionRecords._consumer_record

    def consumer_record(self: PartitionRecords, tp: Any, record: Any) -> Any:
        return record if tp.topic in RAW_TOPICS else wrap(self, tp, record)

    consumer_record._mlmon = True  # type: ignore[attr-defined]
    PartitionRecords._consumer_record = consumer_record


class _Delivery:
    """One fetched batch, delivered: direct topics' records to their handler a partition at a
    time, the rest message by message to faust's conductor (see ``deliver_without_tasks``)."""

    def __init__(self, consumer: Consumer) -> None:
        self.consumer = consumer
        self.app: Any = consumer.app
        self.direct = direct_handlers(self.app)
        RAW_TOPICS.update(self.direct)
        self.rewound = rewinds(consumer)
        self.cannot_block = delivery_check(consumer)
        self.read_offsets: Any = consumer._read_offset
        self.since_yield = 0

    def _current(self, generation: int) -> bool:
        return self.consumer.flow_active and self.app.consumer_generation_id == generation

    async def batch(self, records: Any, active: set[TP] | None) -> None:
        consumer = self.consumer
        generation = self.app.consumer_generation_id
        buffered = consumer._buffered_partitions
        track = self.app.monitor.track_tp_end_offset
        others = {}
        for tp, batch in records.items():
            if active is not None and tp not in active and tp not in buffered:
                continue
            track(tp, consumer.highwater(tp))
            handler = self.direct.get(tp.topic)
            if handler is None:
                others[tp] = batch
                continue
            if not self._current(generation):
                return
            read = self.read_offsets.get(tp)
            if read is not None and batch[0].offset < read:
                batch = [record for record in batch if record.offset >= read]
                if not batch:
                    continue
            if self.rewound.sought:
                self.rewound.fetched(tp, batch[0].offset)
            await handler(tp, batch)
            self.read_offsets[tp] = batch[-1].offset
        if others:
            await self._one_by_one(others, generation)

    async def _one_by_one(self, records: Any, generation: int) -> None:
        """faust's way (round robin between topics), without its four tasks when nothing can block."""
        consumer = self.consumer
        callback = consumer.callback
        to_message = consumer._to_message
        read_offsets = self.read_offsets
        commit_every = consumer._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        for tp, record in consumer.scheduler.iterate(records):
            if not self._current(generation):
                return
            self.since_yield += 1
            if self.since_yield > 100:
                await asyncio.sleep(0)
                self.since_yield = 0
            offset = record.offset
            read = read_offsets.get(tp)
            if read is None or offset >= read:
                gap = offset - (read or 0)
                if gap > 1 and read and acks_enabled_for(tp.topic):
                    await consumer._add_gap(tp, read + 1, offset)
                if commit_every is not None and consumer._n_acked >= commit_every:
                    consumer._n_acked = 0
                    await consumer.commit()
                if self.rewound.sought:
                    self.rewound.fetched(tp, offset)
                message = to_message(tp, record)
                if self.cannot_block(tp):
                    await callback(message)
                else:
                    await consumer.wait_first(callback(message), consumer.suspend_flow.wait())
                read_offsets[tp] = offset


SendRecords = Callable[[str, Sequence[tuple[int, bytes | None, bytes]]], Awaitable[None]]  # (partition, key, value)s


def batch_sender(app: Any) -> SendRecords:
    """Send many records to chosen partitions through aiokafka's batch API, a batch per partition
    (in order within each), on faust's own producer: so a commit, which flushes that producer
    first, follows them. faust's ``Topic.send`` makes a message, a future and a callback for each
    record, which the worker's forwarded records do not need."""

    async def send(topic: str, records: Sequence[tuple[int, bytes | None, bytes]]) -> None:
        producer = app.producer._ensure_producer()
        by_partition: dict[int, list[tuple[bytes | None, bytes]]] = {}
        for partition, key, value in records:
            by_partition.setdefault(partition, []).append((key, value))
        for partition, items in by_partition.items():
            batch = producer.create_batch()
            for key, value in items:
                if batch.append(key=key, value=value, timestamp=None) is None:  # full: send, start another
                    await producer.send_batch(batch, topic, partition=partition)
                    batch = producer.create_batch()
                    if batch.append(key=key, value=value, timestamp=None) is None:
                        raise ValueError(f"a record of {len(value)} bytes does not fit a producer batch")
            await producer.send_batch(batch, topic, partition=partition)

    return send


def table_writable(table: Any, source_topic: str) -> bool:
    """Whether faust 0.15 can route a write to ``table`` made while handling ``source_topic``.

    Each table write checks (``Collection._verify_source_topic_partitions``, once it has passed)
    that the source topic and the table's changelog have as many partitions, from the consumer's
    metadata; until that metadata holds the changelog (some time after the first assignment) it
    counts 0 partitions and every write raises ``PartitionsMismatch``: partials written then
    were lost. The worker waits on this before writing instead.
    """
    from faust.exceptions import PartitionsMismatch

    try:
        table._verify_source_topic_partitions(source_topic)
    except PartitionsMismatch:
        return False
    return True


class _PartitionEvent:
    """Stands for an event of one input partition, for faust's table writes outside an agent."""

    __slots__ = ("__weakref__", "message")

    def __init__(self, topic: str, partition: int) -> None:
        self.message = TP(topic, partition)  # a table write reads .topic and .partition only


@contextmanager
def in_partition(topic: str, partition: int) -> Iterator[None]:
    """Let faust write a table in the flush timer as if handling an event of ``partition``: its
    tables route each write (local store and changelog partition) by the current event."""
    event = _PartitionEvent(topic, partition)
    token = _current_event.set(weakref.ref(event))  # type: ignore[arg-type]
    try:
        yield
    finally:
        _current_event.reset(token)
