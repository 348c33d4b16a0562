"""Patches to faust-streaming 0.15 internals, each for a fault or a cost (see docs/worker.md).
Each is applied once, by :func:`stream.kafka.worker.build_app`. The worker's own fetch loop, the
largest, is in :mod:`stream.kafka.patches.delivery`; everything else that touches faust or
aiokafka internals is here.

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
from typing import Any

from faust.streams import _current_event
from faust.transport.consumer import Consumer
from faust.transport.producer import ProducerBuffer
from faust.types import TP

from stream.kafka.offsets import Handled
from stream.kafka.patches.delivery import (
    RAW_TOPICS,
    Handler,
    deliver_without_tasks,
    delivery_check,
    direct_handlers,
    raw_records_for_direct_topics,
)

__all__ = [
    "RAW_TOPICS",
    "UPSTREAM",
    "Handler",
    "SendRecords",
    "batch_sender",
    "commit_no_further_than_handled",
    "committed_offset",
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
    "committed_offset": (f"{_CONSUMER}.__init__", f"{_CONSUMER}._commit_offsets"),
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
    "table_writable": (  # and worker.METADATA_MAX_AGE_MS, which bounds how long it may stay False
        f"{_TABLE}._verify_source_topic_partitions",
        "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread.topic_partitions",
        "aiokafka.consumer.group_coordinator:BaseCoordinator._get_metadata_snapshot",
    ),
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


def committed_offset(consumer: Any, tp: TP) -> int | None:
    """The offset of ``tp`` that ``consumer`` last committed, or None if it has committed none yet
    (faust 0.15 keeps it only in a private map, which its commits update, not in its API). Not a
    patch: a read that the offsets' bookkeeping (``offsets.Sequencer``) and the worker's start need.
    """
    offset: int | None = consumer._committed_offset.get(tp)
    return offset


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
