"""``mlmon worker``: the faust topology that runs the core over Kafka.

One agent consumes the co-partitioned ``predictions`` and ``labels`` topics (keyed by
``request_id``). The durable state is one changelog-backed table keyed by request id, holding
the first prediction and the first label of each request (first wins; later ones are never
stored). The core :class:`Engine` in memory is a pure function of that table: after a start, a
crash or a rebalance it is rebuilt by feeding the table back in timestamp order, and only then
does the agent go on. A message replayed after a crash finds its record already in the table and
cannot change it, so no pair is counted twice; a record the table lost is replayed from Kafka
(faust flushes changelogs before it commits offsets), so none is lost.

Limits of this first topology (see docs/worker.md): one worker process per consumer group
computes complete figures (it owns every partition); ``cumulative`` and ``rolling`` windows are
not restart-safe here and are refused.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from dataclasses import asdict
from typing import Any

import faust
import orjson

from stream.config import Config
from stream.core.engine import Engine, record_key
from stream.core.records import decode, parse_label, parse_prediction
from stream.errors import ConfigError, InvalidRecord
from stream.kafka.admin import ensure_topics

log = logging.getLogger("mlmon.worker")

WATERMARK_KEY = "\x00watermark"  # per-partition high-water event time, stored in the table too
ALERT_KEY = "\x00alerts"
PRUNE_SLACK_S = 120.0


def check_worker_config(config: Config) -> None:
    refused = [w.name for w in config.windows if w.kind in ("cumulative", "rolling")]
    if refused:
        raise ConfigError(
            f"the Kafka worker does not support {', '.join(refused)} windows yet (they cannot be rebuilt "
            "from the join table after a restart); use tumbling or hopping windows"
        )


class Topology:
    """The worker's state and handlers, independent of how faust delivers messages."""

    def __init__(self, config: Config) -> None:
        check_worker_config(config)
        self.config = config
        self.engine = Engine(config, clock=time.time)
        self.max_window_s = max((w.size_s for w in config.windows), default=0)
        self.stale = True  # rebuild the engine from the table before the next message
        self.partition_watermarks: dict[str, float] = {}
        self.prune_due: dict[int, list[tuple[str, int]]] = defaultdict(list)

    def rebuild(self, table: Any) -> None:
        """A fresh engine fed with every stored record in timestamp order, with no watermark (so none
        is judged stale), then moved to the watermark reached before."""
        engine = Engine(self.config, clock=time.time)
        self.partition_watermarks = {
            k[len(WATERMARK_KEY):]: float(v) for k, v in table.items() if k.startswith(WATERMARK_KEY)
        }
        watermark = min(self.partition_watermarks.values(), default=-math.inf)
        records: list[tuple[float, int, dict[str, Any]]] = []
        self.prune_due.clear()
        for key, entry in table.items():
            if key.startswith("\x00"):
                continue
            for kind, slot in ((0, "p"), (1, "l")):
                if slot in entry:
                    records.append((float(entry[slot]["_ts"]), kind, entry[slot]))
            first = min(float(entry[s]["_ts"]) for s in ("p", "l") if s in entry)
            self._schedule_prune(key, first, int(entry.get("_part", 0)))
        records.sort(key=lambda r: (r[0], r[1]))
        for _, kind, raw in records:
            if kind == 0:
                engine.prediction(parse_prediction(raw))
            else:
                engine.label(parse_label(raw))
        if math.isfinite(watermark):
            engine.resume(watermark - self.config.watermark_lag_s)
        engine.flush()  # publish every open window's current state once more: upserts, so harmless
        engine.alert_events.clear()  # rule states are rebuilt; events already went out before
        engine.dead_letters.clear()  # stored records were valid; their dead letters went out before
        self.engine = engine
        self.stale = False
        log.info("engine rebuilt from %d stored records; watermark %s", len(records), watermark)

    def _schedule_prune(self, request_id: str, ts: float, partition: int) -> None:
        # Keep a request until every window of its prediction is final, then forget it.
        deadline = ts + self.max_window_s + self.config.join_ttl_s + PRUNE_SLACK_S
        self.prune_due[int(deadline // 60)].append((request_id, partition))

    def handle(self, table: Any, topic: str, partition: int, offset: int, raw: bytes | None) -> None:
        """Validate, store first-wins, feed the engine. Never raises: bad input is dead-lettered."""
        config = self.config
        source = "predictions" if topic == config.predictions_topic else "labels"
        where = {"topic": topic, "partition": partition, "offset": offset}
        try:
            obj = decode(raw or b"", config.max_record_bytes)
            record = parse_prediction(obj) if source == "predictions" else parse_label(obj)
        except InvalidRecord as exc:
            text = (raw or b"")[:4096].decode("utf-8", errors="replace")
            self.engine.dead_letter(source, text, str(exc), **where)
            return
        slot = "p" if source == "predictions" else "l"
        entry = table.get(record.request_id)
        if entry is None or slot not in entry:
            entry = dict(entry or {})
            obj["_ts"] = record.timestamp
            entry[slot] = obj
            entry["_part"] = partition
            table[record.request_id] = entry
            if len(entry) == 2:
                self._schedule_prune(record.request_id, record.timestamp, partition)
        engine = self.engine
        if source == "predictions":
            engine.prediction(record, raw=obj)  # type: ignore[arg-type]
        else:
            engine.label(record)  # type: ignore[arg-type]
        self._advance(table, f"{source}/{partition}", record.timestamp)

    def _advance(self, table: Any, source: str, ts: float) -> None:
        """Event time is per topic-partition; the engine's watermark is the slowest one's, so an
        input that lags (labels behind predictions, a partition catching up) is never judged stale."""
        watermarks = self.partition_watermarks
        if ts <= watermarks.get(source, -math.inf):
            return
        watermarks[source] = ts
        self.engine.observe(min(watermarks.values()))
        wm_key = f"{WATERMARK_KEY}{source}"
        if ts > float(table.get(wm_key, -math.inf)) + 1.0:
            table[wm_key] = ts

    def prune(self, table: Any, partition: int) -> int:
        """Forget requests of this partition whose windows are all final (changelog deletes)."""
        horizon = int(self.engine.watermark // 60)
        pruned = 0
        for bucket in [b for b in self.prune_due if b < horizon]:
            keep = []
            for request_id, part in self.prune_due.pop(bucket):
                if part != partition:
                    keep.append((request_id, part))
                elif request_id in table:
                    del table[request_id]
                    pruned += 1
            if keep:
                self.prune_due[bucket].extend(keep)
        return pruned

    def health(self) -> dict[str, Any]:
        """Where every consumed record went (since this process started or last rebuilt)."""
        engine = self.engine
        health = {k: v for k, v in asdict(engine.health).items() if k != "label_lag_buckets"}
        pending_predictions, pending_labels = engine.pending()
        health.update(pending_predictions=pending_predictions, pending_labels=pending_labels,
                      balance=engine.balance(), watermark=engine.watermark if math.isfinite(engine.watermark) else None,
                      app_id=self.config.app_id, emitted_at=time.time())
        return health

    def outputs(self) -> list[tuple[str, bytes, bytes]]:
        """(topic, key, value) of everything the engine emitted since the last call."""
        engine, config = self.engine, self.config
        out = [(config.metrics_topic, record_key(r).encode(), orjson.dumps(r)) for r in engine.metric_records]
        out += [(config.alerts_topic, e["fingerprint"].encode(), orjson.dumps(e)) for e in engine.alert_events]
        out += [(config.dead_letters_topic, str(d.get("offset", "")).encode(), orjson.dumps(d))
                for d in engine.dead_letters]
        engine.metric_records.clear()
        engine.alert_events.clear()
        engine.dead_letters.clear()
        return out


def build_app(config: Config) -> faust.App:
    topology = Topology(config)
    app = faust.App(
        config.app_id,
        broker=f"kafka://{config.broker}",
        store="rocksdb://",  # faust uses the rocksdict driver when python-rocksdb is absent
        datadir=config.data_dir,
        web_enabled=False,
        topic_partitions=config.partitions,
        topic_replication_factor=config.replication_factor,
        producer_acks=-1,
        broker_commit_every=100,
        broker_commit_interval=1.0,
        table_standby_replicas=0,
        broker_session_timeout=10.0,  # a killed worker's partitions move on after 10 s, not 60 s
        broker_heartbeat_interval=3.0,
    )
    inputs = app.topic(config.predictions_topic, config.labels_topic,
                       key_serializer="raw", value_serializer="raw")
    requests = app.Table("mlmon-requests", partitions=config.partitions, options={"driver": "rocksdict"},
                         key_type=str)
    output_topics = {
        name: app.topic(name, key_serializer="raw", value_serializer="raw")
        for name in (config.metrics_topic, config.alerts_topic, config.dead_letters_topic)
    }

    health_topic = app.topic(config.health_topic, key_serializer="raw", value_serializer="raw")

    async def publish() -> None:
        for topic, key, value in topology.outputs():
            await output_topics[topic].send(key=key, value=value)

    @app.agent(inputs, concurrency=1)
    async def process(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            message = event.message
            if topology.stale:
                topology.rebuild(requests)
            try:
                topology.handle(requests, message.topic, message.partition, message.offset, event.value)
                if topology.prune_due and min(topology.prune_due) < topology.engine.watermark // 60:
                    topology.prune(requests, message.partition)
            except Exception:  # a bug must not ack a message silently: log it, dead-letter it
                log.exception("failed on %s[%s]@%s", message.topic, message.partition, message.offset)
                topology.engine.dead_letter(
                    "predictions" if message.topic == config.predictions_topic else "labels",
                    (event.value or b"")[:4096].decode("utf-8", "replace"), "internal error (see worker log)",
                    topic=message.topic, partition=message.partition, offset=message.offset,
                )
            await publish()

    @app.timer(interval=1.0)  # type: ignore[untyped-decorator]
    async def flush() -> None:
        if not topology.stale:
            topology.engine.flush()
            await publish()
            await health_topic.send(key=config.app_id.encode(), value=orjson.dumps(topology.health()))

    def on_rebalance(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        topology.stale = True  # partitions moved: rebuild from the table before the next message

    app.on_partitions_revoked.connect(on_rebalance)
    app.on_partitions_assigned.connect(on_rebalance)

    app.mlmon_topology = topology  # type: ignore[attr-defined]
    return app


def run_worker(config: Config, loglevel: str = "info") -> int:
    check_worker_config(config)
    ensure_topics(config)
    app = build_app(config)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    worker.execute_from_commandline()
    return 0
