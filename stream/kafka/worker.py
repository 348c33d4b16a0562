"""``mlmon worker``: the faust topology that runs the core over Kafka.

Two agents per worker process (see docs/worker.md), wired to faust here:

1. **join** (:mod:`stream.kafka.join_agent`) consumes ``predictions``, ``labels`` and the
   internal repartition topic, which carries the records that arrived on another partition than
   their request's (:mod:`stream.kafka.routing`). Each join partition's engine is rebuilt from
   its stored batches after a start, a crash or a rebalance; it publishes the absolute state of
   its changed windows ("partials", keyed by model), then the worker its watermarks.
2. **merge** (:mod:`stream.kafka.merge_agent`) sums the partials at each heartbeat into one
   metric record per changed window, evaluates the alert rules, and marks a window final once
   every join partition's watermark has passed it. Absolute partials make replays and
   duplicates harmless.

So any number of workers in one consumer group give the same figures as one.
"""

from __future__ import annotations

import faulthandler
import gc
import logging
import signal
from typing import Any

import faust

from stream.collector import THRESHOLDS
from stream.config import Config
from stream.core.windows import counting_window
from stream.exporters.alerts import Delivery
from stream.exporters.prometheus import EngineCollector, serve
from stream.kafka.admin import ensure_topics, faust_credentials
from stream.kafka.join_agent import Join
from stream.kafka.memory import map_large_blocks_apart
from stream.kafka.merge_agent import Merge
from stream.kafka.offsets import Handled
from stream.kafka.patches import (
    batch_sender,
    commit_no_further_than_handled,
    complete_producer_flushes,
    deliver_without_tasks,
    direct_handlers,
    raw_records_for_direct_topics,
    tune_fetches,
    tune_rocksdict_stores,
)
from stream.kafka.runtime import Runtime

__all__ = [
    "FETCH_MAX_BYTES",
    "FETCH_MAX_WAIT_MS",
    "PARTITION_FETCH_MAX_BYTES",
    "STORE_OPTIONS",
    "build_app",
    "run_worker",
]

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
# The consumer's group coordinator counts a topic's partitions from the client's metadata, refreshed
# only every metadata_max_age_ms (aiokafka's default: 5 minutes) unless something forces it. A
# metadata response read just before a changelog topic is visible counts it as 0 partitions, and
# faust then refuses every write to that table (``patches.table_writable``) until the next refresh:
# the worker would hold its partials for minutes. A short age bounds that wait.
METADATA_MAX_AGE_MS = 5_000
# The producer's batch cap. aiokafka sends one request at a time to a broker, with at most one batch
# per partition, and a record that does not fit the partition's open batch waits for it to be sent.
# With faust's 16 KiB, each stored batch of records (about 64 KiB compressed) went out alone, a round
# trip each, and a commit (which flushes the producer first) took 11-16 s under load, beyond the
# group's session timeout: a rebalance then waited on it. With 1 MB (the request cap) the same run's
# longest commit took 4.6-6.3 s.
PRODUCER_MAX_BATCH_BYTES = 1_000_000
# Per partition store. faust's defaults (3 x 64 MiB write buffers, a 2 GiB block cache) would keep
# every stored record in memory too; each batch is written once and read once, at a rebuild, so
# small buffers cost nothing (4 MiB write buffers had cost 67 bytes per pending prediction over 8
# partitions). Values of a KiB or more (the batches, compressed already) go to blob files, with no
# further compression and no write-ahead log (see ``tune_rocksdict_stores``). (A copy each: faust
# pops keys from the options it is given.)
STORE_OPTIONS = {"driver": "rocksdict", "write_buffer_size": 1 << 20, "max_write_buffer_number": 2,
                 "block_cache_size": 2 << 20, "min_blob_size": 1024, "compression": "none", "wal": False}


def build_app(config: Config, partition_counts: dict[str, int] | None = None) -> faust.App:
    """The worker's faust app; ``partition_counts``: the input topics' partition counts ("predictions",
    "labels"), the configured ``partitions`` each when not given."""
    complete_producer_flushes()
    deliver_without_tasks()
    tune_rocksdict_stores()
    tune_fetches(FETCH_MAX_BYTES, FETCH_MAX_WAIT_MS)
    raw_records_for_direct_topics()
    handled = Handled()
    commit_no_further_than_handled(handled)
    delivery = Delivery(config.alertmanager_url or None, config.webhook_url or None).start()
    join = Join(config, partition_counts)
    merge = Merge(config, on_alerts=delivery.submit)
    counted = counting_window(config.windows)
    collector = EngineCollector(join.totals, lambda: [*merge.rules.evaluated(), *merge.detector_states()],
                                counted.name if counted else None,
                                lambda: dict(join.lag),
                                lambda: {topic: join.forwarding.counts[source] for source, topic in (
                                    ("predictions", config.predictions_topic), ("labels", config.labels_topic))},
                                custom=[m.name for m in config.custom_metrics], sample=config.sample,
                                store=join.store_status)
    merge.on_record = lambda record: collector.observe([record])
    merge.on_forget = collector.forget
    if config.metrics_port:
        try:
            serve(collector, config.metrics_port, config.metrics_address)
            log.info("Prometheus metrics at http://%s:%d/metrics", config.metrics_address, config.metrics_port)
        except OSError as exc:
            log.warning("not serving /metrics on %s:%d: %s", config.metrics_address, config.metrics_port, exc)
    app = faust.App(
        config.app_id,
        broker=[f"kafka://{server}" for server in config.broker.split(",")],
        broker_credentials=faust_credentials(config),  # kafka_options' SASL/SSL settings, as the other clients get
        store="rocksdb://",  # faust uses the rocksdict driver when python-rocksdb is absent
        datadir=config.data_dir,
        web_enabled=False,
        topic_partitions=config.partitions,
        topic_replication_factor=config.replication_factor,
        producer_acks=-1,
        producer_max_batch_size=PRODUCER_MAX_BATCH_BYTES,
        broker_commit_every=10_000,  # offsets move when batches are saved (each flush), not per message
        broker_commit_interval=1.0,
        table_standby_replicas=0,
        broker_session_timeout=10.0,  # a killed worker's partitions move on after 10 s, not 60 s
        broker_heartbeat_interval=3.0,
        consumer_max_fetch_size=PARTITION_FETCH_MAX_BYTES,
        consumer_metadata_max_age_ms=METADATA_MAX_AGE_MS,
    )
    def raw_topic(*names: str, partitions: int | None = None) -> faust.TopicT:
        return app.topic(*names, partitions=partitions, key_serializer="raw", value_serializer="raw")

    inputs = raw_topic(config.predictions_topic, config.labels_topic, config.repartition_topic)
    partials = raw_topic(config.partials_topic, partitions=config.partitions)
    batches = app.Table("mlmon-batches", partitions=config.partitions, options=dict(STORE_OPTIONS),
                        key_type=str, value_type=bytes)  # bytes: stored as they are (raw)
    windows = app.Table("mlmon-windows", partitions=config.partitions, options=dict(STORE_OPTIONS), key_type=str)
    outputs = {name: raw_topic(name) for name in (
        config.metrics_topic, config.alerts_topic, config.dead_letters_topic, config.partials_topic,
        config.health_topic)}

    async def send(topic: str, key: bytes | None, value: bytes, partition: int | None) -> Any:
        return await outputs[topic].send(key=key, value=value, partition=partition)

    runtime = Runtime(config, app, batches, windows, send, join, merge, handled, batch_sender(app),
                      lambda: app.producer.flush())

    # faust's fetch loop hands each partition's fetched input messages to join_inputs (no
    # conductor, stream or event per message: see deliver_without_tasks); the agent subscribes
    # the inputs, and would deliver them the same way without that patch.
    direct_handlers(app).update({config.predictions_topic: runtime.join_inputs,
                                 config.labels_topic: runtime.join_inputs,
                                 config.repartition_topic: runtime.join_inputs})

    @app.agent(inputs, concurrency=1)
    async def join_agent(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            await runtime.join_inputs(event.message.tp, [event.message])

    @app.agent(partials, concurrency=1)
    async def merge_agent(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            await runtime.merge_one(event.message, event.value)

    app.timer(interval=max(config.flush_interval_ms, 10) / 1000)(runtime.flush)
    app.on_partitions_revoked.connect(runtime.on_rebalance)
    app.on_partitions_assigned.connect(runtime.on_rebalance)
    app.on_rebalance_complete.connect(runtime.on_rebalance)  # tables recovered: rebuild from what they hold now
    return app


def run_worker(config: Config, loglevel: str = "info") -> int:
    map_large_blocks_apart()
    gc.set_threshold(*THRESHOLDS)  # see ``stream.collector``
    # A worker that stops making progress can say where it is, and carries on: `kill -QUIT <pid>`
    # writes every thread's Python stack to the log even when the event loop is blocked (and
    # `kill -USR1 <pid>`, handled by mode on the loop, the stacks of its asyncio tasks too).
    faulthandler.register(signal.SIGQUIT, all_threads=True)
    faust_credentials(config)  # refuse unsupported security settings before touching Kafka
    counts = ensure_topics(config)
    app = build_app(config, {"predictions": counts[config.predictions_topic], "labels": counts[config.labels_topic]})
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    worker.execute_from_commandline()
    return 0
