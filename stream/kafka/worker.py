"""``mlmon worker``: the faust topology that runs the core over Kafka.

Two agents per worker process (see docs/worker.md): the join (:mod:`stream.kafka.join_agent`)
and the merge (:mod:`stream.kafka.merge_agent`). This module wires them to faust.

1. **join** consumes the co-partitioned ``predictions`` and ``labels`` topics (keyed by
   ``request_id``). Its only durable state is a changelog-backed table, a log of *batches* per
   input partition: the raw records that partition's engine took in (the first prediction and
   the first label of each request; never a duplicate), one table write per flush. Each input
   partition has its own core :class:`Engine` in memory, a pure function of its batches: after a
   start, a crash or a rebalance it is rebuilt by feeding them back. Offsets are committed only
   up to messages whose batch is written, so a record missing from the table is read again from
   Kafka (none lost), and a replayed one is a duplicate to the rebuilt engine (none counted
   twice). Each engine publishes the *absolute* state of its changed windows ("partials", keyed
   by model), then the worker its partitions' watermarks (a heartbeat).
2. **merge** consumes the partials, partitioned by model: it keeps the latest partial per
   (window, input partition) in a table, sums them at each heartbeat into one metric record per
   changed window, evaluates
   the alert rules, and marks a window final once every input partition's watermark has passed
   it. Absolute partials make replays and duplicates harmless.

So any number of workers in one consumer group give the same figures as one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import faust
import orjson
from faust.types import TP

from stream.config import Config
from stream.exporters.alerts import Delivery
from stream.exporters.prometheus import EngineCollector, serve
from stream.kafka.admin import ensure_topics, faust_credentials
from stream.kafka.join_agent import SAVE_BYTES, Join, Output, check_worker_config
from stream.kafka.memory import map_large_blocks_apart, return_free_memory
from stream.kafka.merge_agent import Merge
from stream.kafka.offsets import Handled, Sequencer, rewinds
from stream.kafka.patches import (
    commit_no_further_than_handled,
    complete_producer_flushes,
    deliver_without_tasks,
    direct_handlers,
    in_partition,
    raw_records_for_direct_topics,
    table_writable,
    tune_fetches,
    tune_rocksdict_stores,
)

log = logging.getLogger("mlmon.worker")

# One fetch, over all partitions (see ``tune_fetches``): 1,000,000 pending predictions peaked at
# 208 bytes each of RSS with 4 MiB, 348 with 8 MiB, 394 with 16 MiB, for about 5% less throughput
# than 16 MiB. A partition's fetched records wait in aiokafka until handled, one fetch per
# partition, so the per-partition cap bounds what all partitions hold together: with 4 MiB the
# peak reached 261 (RSS sampled every 0.2 s: 60 MB more for 5 s as the backlog drained), with
# 2 MiB 214 and with 1 MiB 206, for no throughput lost (workers-only runs at the same hour).
FETCH_MAX_BYTES = 4 << 20
PARTITION_FETCH_MAX_BYTES = 2 << 20
FETCH_MAX_WAIT_MS = 100  # see ``tune_fetches``
# Per partition store. faust's defaults (3 x 64 MiB write buffers, a 2 GiB block cache) would keep
# every stored record in memory too; each batch is written once and read once, at a rebuild, so
# small buffers cost nothing (4 MiB write buffers had cost 67 bytes per pending prediction over 8
# partitions). Values of a KiB or more (the batches, compressed already) go to blob files, with no
# further compression and no write-ahead log (see ``tune_rocksdict_stores``). (A copy each: faust
# pops keys from the options it is given.)
STORE_OPTIONS = {"driver": "rocksdict", "write_buffer_size": 1 << 20, "max_write_buffer_number": 2,
                 "block_cache_size": 2 << 20, "min_blob_size": 1024, "compression": "none", "wal": False}


def build_app(config: Config) -> faust.App:
    complete_producer_flushes()
    deliver_without_tasks()
    tune_rocksdict_stores()
    tune_fetches(FETCH_MAX_BYTES, FETCH_MAX_WAIT_MS)
    raw_records_for_direct_topics()
    handled = Handled()
    commit_no_further_than_handled(handled)
    sequencer = Sequencer(handled)
    delivery = Delivery(config.alertmanager_url or None, config.webhook_url or None).start()
    join = Join(config)
    merge = Merge(config, on_alerts=delivery.submit)
    collector = EngineCollector(join.totals, merge.rules.evaluated, config.windows[0].name, lambda: dict(join.lag),
                                join.routing.counts)
    merge.on_record = lambda record: collector.observe([record])
    if config.metrics_port:
        try:
            serve(collector, config.metrics_port, config.metrics_address)
            log.info("Prometheus metrics at http://%s:%d/metrics", config.metrics_address, config.metrics_port)
        except OSError as exc:
            log.warning("not serving /metrics on %s:%d: %s", config.metrics_address, config.metrics_port, exc)
    app = faust.App(
        config.app_id,
        broker=f"kafka://{config.broker}",
        broker_credentials=faust_credentials(config),  # kafka_options' SASL/SSL settings, as the other clients get
        store="rocksdb://",  # faust uses the rocksdict driver when python-rocksdb is absent
        datadir=config.data_dir,
        web_enabled=False,
        topic_partitions=config.partitions,
        topic_replication_factor=config.replication_factor,
        producer_acks=-1,
        broker_commit_every=10_000,  # offsets move when batches are saved (each flush), not per message
        broker_commit_interval=1.0,
        table_standby_replicas=0,
        broker_session_timeout=10.0,  # a killed worker's partitions move on after 10 s, not 60 s
        broker_heartbeat_interval=3.0,
        consumer_max_fetch_size=PARTITION_FETCH_MAX_BYTES,
    )
    def raw_topic(*names: str, partitions: int | None = None) -> faust.TopicT:
        return app.topic(*names, partitions=partitions, key_serializer="raw", value_serializer="raw")

    inputs = raw_topic(config.predictions_topic, config.labels_topic)
    partials = raw_topic(config.partials_topic, partitions=config.partitions)
    requests = app.Table("mlmon-batches", partitions=config.partitions, options=dict(STORE_OPTIONS),
                         key_type=str, value_type=bytes)  # bytes: stored as they are (raw)
    windows = app.Table("mlmon-windows", partitions=config.partitions, options=dict(STORE_OPTIONS), key_type=str)
    outputs = {name: raw_topic(name) for name in (
        config.metrics_topic, config.alerts_topic, config.dead_letters_topic, config.partials_topic,
        config.health_topic)}

    # One sender at a time, in the order outputs were drained: a heartbeat (a partition's watermark)
    # must reach the merger after every partial of the records below that watermark, or it could
    # close a window before the window's last pairs arrive.
    sending = asyncio.Lock()

    async def publish(items: list[Output]) -> None:
        for topic, key, value in items:
            await outputs[topic].send(key=key, value=value)

    def mark_handled(partition: int, saved: list[list[Any]]) -> None:
        for topic, first, last in saved:
            handled.add(TP(topic, partition), first, last)

    async def join_inputs(tp: TP, messages: list[Any]) -> None:
        """A partition's input messages, in offset order: each fed to the partition's engine, and
        saved with its batch."""
        partition = tp.partition
        for n, message in enumerate(messages, 1):
            offset = message.offset
            if app.rebalancing:
                sequencer.skipped(tp, offset)
                continue
            admitted = sequencer.admit(app.consumer, tp, offset)
            if admitted is None:
                admitted = await in_sequence(tp, offset)
            if not admitted:
                continue
            if join.stale:
                join.rebuild(requests)
            handle_one(tp.topic, partition, offset, message.value)
            saved = []
            if join.unsaved_bytes(partition) >= SAVE_BYTES and table_writable(requests, config.predictions_topic):
                with in_partition(config.predictions_topic, partition):
                    saved = join.save(requests, partition)
            engine = join.engines[partition]
            if engine.metric_records or engine.dead_letters:  # the others' are drained by the flush timer
                async with sending:
                    await publish(join.outputs())
            mark_handled(partition, saved)
            if n % 256 == 0:
                await asyncio.sleep(0)  # let timers run within a long batch

    def handle_one(topic: str, partition: int, offset: int, value: bytes | None) -> None:
        try:
            join.handle(topic, partition, offset, value)
        except Exception:  # a bug must not ack a message silently: log it, dead-letter it
            log.exception("failed on %s[%s]@%s", topic, partition, offset)
            join.engine(partition).dead_letter(
                "predictions" if topic == config.predictions_topic else "labels",
                (value or b"")[:4096].decode("utf-8", "replace"), "internal error (see worker log)",
                topic=topic, partition=partition, offset=offset,
            )

    # faust's fetch loop hands each partition's fetched input messages to join_inputs (no
    # conductor, stream or event per message: see deliver_without_tasks); the agent subscribes
    # the inputs, and would deliver them the same way without that patch.
    direct_handlers(app).update({config.predictions_topic: join_inputs, config.labels_topic: join_inputs})

    @app.agent(inputs, concurrency=1)
    async def join_agent(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            await join_inputs(event.message.tp, [event.message])

    @app.agent(partials, concurrency=1)
    async def merge_agent(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            message = event.message
            if not await in_sequence(message.tp, message.offset):
                continue
            if not await writable(windows):
                continue  # a rebalance came meanwhile: read again after it
            if merge.stale:
                merge.rebuild(windows)
            items = merge.handle(windows, message.partition, message.offset, event.value)
            if items:
                async with sending:
                    await publish(items)
            handled.add(message.tp, message.offset)

    async def writable(table: Any) -> bool:
        """Wait until faust can route ``table``'s writes (it learns its changelog's partitions some
        time after the assignment; a write before fails): False if a rebalance came first."""
        waited = 0
        while not table_writable(table, config.partials_topic):
            if app.rebalancing:
                return False
            waited += 1
            if waited == 300:
                log.warning("table %s cannot be written after 30 s: does %s have %d partitions?",
                            table.name, config.partials_topic, config.partitions)
            await asyncio.sleep(0.1)
        return True

    async def in_sequence(tp: TP, offset: int) -> bool:
        """Whether an agent handles this message: none during a rebalance, then each partition's
        in offset order (see Sequencer)."""
        while not app.rebalancing:
            verdict = sequencer.admit(app.consumer, tp, offset)
            if verdict is not None:
                return verdict
            await learn_where_logs_begin()  # no committed offset: counting starts at the log's start
            if tp not in handled.earliest:
                await asyncio.sleep(0.5)  # the broker did not answer: ask again
        sequencer.skipped(tp, offset)
        return False

    health_due = 0.0  # health records once a second, whatever the flush interval

    @app.timer(interval=max(config.flush_interval_ms, 10) / 1000)  # type: ignore[untyped-decorator]
    async def flush() -> None:
        nonlocal health_due
        if join.stale:
            if app.rebalancing:  # tables may still be recovering
                return
            join.rebuild(requests)  # even with no input flowing: watermarks, partials and health go out
            return_free_memory()
        if not table_writable(requests, config.predictions_topic):
            return  # just after an assignment: saved at a later flush
        assigned = sorted(tp.partition for tp in app.consumer.assignment() if tp.topic == config.predictions_topic)
        join.refresh_idle(assigned, time.monotonic())
        async with sending:
            saved = {}
            for partition in list(join.engines):  # write each partition's batch, then forget the final
                with in_partition(config.predictions_topic, partition):
                    saved[partition] = join.save(requests, partition)
                    if join.prune_due and min(join.prune_due) < join.watermark(partition) // 60:
                        join.prune(requests, partition)
            for engine in join.engines.values():
                engine.flush()
            items = join.outputs()  # drained with no await before the watermarks are read
            beat = join.heartbeat(assigned)
            await publish(items)
            if beat is not None:
                for partition in range(config.partitions):  # every merger partition hears every watermark
                    await partials.send(key=None, value=beat, partition=partition)
        for partition, offsets in saved.items():
            mark_handled(partition, offsets)
        if time.monotonic() >= health_due:
            health_due = time.monotonic() + 1.0
            await learn_where_logs_begin()
            stalled = [] if app.rebalancing else sequencer.stalled(app.consumer)
            health = {**join.health(), "rereads": sequencer.rereads,  # seeks back to messages faust skipped
                      "stalled_partitions": stalled}
            await outputs[config.health_topic].send(key=config.app_id.encode(), value=orjson.dumps(health))
            join.lag = consumer_lag(app, join.offsets)
            return_free_memory()

    committed_topics = {config.predictions_topic, config.labels_topic, config.partials_topic}

    async def learn_where_logs_begin() -> None:
        """The start offset of each assigned input without a committed offset (see Handled)."""
        consumer = app.consumer
        unknown = [tp for tp in consumer.assignment() if tp.topic in committed_topics
                   and consumer._committed_offset.get(tp) is None and tp not in handled.earliest]  # type: ignore[attr-defined]
        if unknown:
            try:
                handled.earliest.update(await consumer.earliest_offsets(*unknown))
            except Exception as exc:  # a rebalance or a broker outage: asked again next second
                log.info("start offsets not known yet: %s", exc)

    def on_rebalance(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        join.stale = merge.stale = True  # partitions moved: rebuild from the tables before the next message
        sequencer.reset()
        rewinds(app.consumer).clear()  # partitions are sought to their committed offsets anyway

    app.on_partitions_revoked.connect(on_rebalance)
    app.on_partitions_assigned.connect(on_rebalance)
    app.on_rebalance_complete.connect(on_rebalance)  # tables recovered: rebuild from what they hold now
    return app


def consumer_lag(app: faust.App, offsets: dict[tuple[str, int], int]) -> dict[tuple[str, int], int]:
    """Records between the last one handled and the high-water mark, per input topic-partition."""
    lag = {}
    for (topic, partition), offset in list(offsets.items()):
        try:
            highwater = app.consumer.highwater(TP(topic, partition))
        except Exception:  # not assigned here any more, or not fetched yet
            continue
        if highwater is not None:
            lag[(topic, partition)] = max(0, highwater - offset - 1)
    return lag


def run_worker(config: Config, loglevel: str = "info") -> int:
    map_large_blocks_apart()
    check_worker_config(config)
    faust_credentials(config)  # refuse unsupported security settings before touching Kafka
    ensure_topics(config)
    app = build_app(config)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    worker.execute_from_commandline()
    return 0
