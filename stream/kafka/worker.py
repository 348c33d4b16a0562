"""``mlmon worker``: the faust topology that runs the core over Kafka.

Two agents per worker process (see docs/worker.md):

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
import ctypes
import ctypes.util
import functools
import logging
import math
import os
import time
import uuid
import zlib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import faust
import orjson
from faust.types import TP

from stream.config import Config
from stream.core.clock import future_reason
from stream.core.engine import Engine, Health
from stream.core.keys import record_key, segment_label
from stream.core.merge import merge_states, metric_record
from stream.core.records import Label, Prediction, decode, parse_label, parse_prediction
from stream.core.rules import RuleBook, RuleState, rfc3339
from stream.core.windows import WindowSpec
from stream.errors import ConfigError, InvalidRecord
from stream.exporters.alerts import Delivery
from stream.exporters.prometheus import EngineCollector, serve
from stream.kafka.admin import ensure_topics, faust_credentials
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
from stream.kafka.routing import ROUTE_SAMPLE_MASK, Routing

log = logging.getLogger("mlmon.worker")

WATERMARK_KEY = "\x00watermark/"  # per input topic-partition event time, stored in the batch table
BATCH_KEY = "batch/"  # + partition/id: a batch of records
# One fetch, over all partitions (see ``tune_fetches``): 1,000,000 pending predictions peaked at
# 208 bytes each of RSS with 4 MiB, 348 with 8 MiB, 394 with 16 MiB, for about 5% less throughput
# than 16 MiB. A partition's fetched records wait in aiokafka until handled, one fetch per
# partition, so the per-partition cap bounds what all partitions hold together: with 4 MiB the
# peak reached 261 (RSS sampled every 0.2 s: 60 MB more for 5 s as the backlog drained), with
# 2 MiB 214 and with 1 MiB 206, for no throughput lost (workers-only runs at the same hour).
FETCH_MAX_BYTES = 4 << 20
PARTITION_FETCH_MAX_BYTES = 2 << 20
FETCH_MAX_WAIT_MS = 100  # see ``tune_fetches``
SAVE_BYTES = 256 * 1024  # a partition writes its batch at this size, or at the next flush
# Batches are stored zlib-compressed at level 1: 3.9 times smaller (the records' JSON) at about
# 200 MB/s, against writing every input byte again to the changelog, the broker and rocksdb's blob
# files. That saved 1.5 to 2 s of the machine's CPU per 1,000,000 pairs (rocksdb's threads went from
# about 2 s to 0.3 s), CPU two workers share. Batches written before are plain JSON: ``{`` first.
BATCH_ZLIB_LEVEL = 1
SOURCES = ("predictions", "labels")
RULES_KEY = "\x00rules/"  # per model: alert rule states, stored in the window table
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
PRUNE_SLACK_S = 120.0
SWEEP_SLACK_S = 60.0  # the engine finalizes a window at end + TTL + one sweep
Output = tuple[str, bytes | None, bytes]  # (topic, key, value)
# Per partition store. faust's defaults (3 x 64 MiB write buffers, a 2 GiB block cache) would keep
# every stored record in memory too; each batch is written once and read once, at a rebuild, so
# small buffers cost nothing (4 MiB write buffers had cost 67 bytes per pending prediction over 8
# partitions). Values of a KiB or more (the batches, compressed already) go to blob files, with no
# further compression and no write-ahead log (see ``tune_rocksdict_stores``). (A copy each: faust
# pops keys from the options it is given.)
STORE_OPTIONS = {"driver": "rocksdict", "write_buffer_size": 1 << 20, "max_write_buffer_number": 2,
                 "block_cache_size": 2 << 20, "min_blob_size": 1024, "compression": "none", "wal": False}


def check_worker_config(config: Config) -> None:
    unsupported = ("cumulative", "rolling")
    if not config.windows_configured:  # the defaults: keep what the worker supports
        config.windows = [w for w in config.windows if w.kind not in unsupported]
    refused = [w.name for w in config.windows if w.kind in unsupported]
    if refused:
        raise ConfigError(
            f"the Kafka worker does not support {', '.join(refused)} windows yet (their state cannot be "
            "rebuilt from the stored batches after a restart); use tumbling or hopping windows"
        )


@dataclass
class Unsaved:
    """What one partition's engine took in since the table last heard of it."""

    predictions: list[bytes] = field(default_factory=list)  # raw JSON, as consumed
    labels: list[bytes] = field(default_factory=list)
    offsets: list[list[Any]] = field(default_factory=list)  # [topic, first, last]: the messages handled
    size: int = 0
    last_ts: float = -math.inf


class Join:
    """The join agent's state and handlers, independent of how faust delivers messages.

    The batch table is a log: each write (a *batch*) holds the raw records the partition's engine
    took in since the last one, so a record costs no table read or write of its own. A message
    counts as handled (its offset may be committed) only once its batch is written.
    """

    def __init__(self, config: Config) -> None:
        check_worker_config(config)
        self.config = config
        self.engines: dict[int, Engine] = {}
        self.max_window_s = max((w.size_s for w in config.windows), default=0)
        self.stale = True  # rebuild the engines from the table before the next message
        self.marks: dict[int, list[float]] = {}  # partition -> [predictions' event time, labels', the lower]
        self.saved_marks: dict[str, float] = {}  # "predictions/3" -> event time, as the table has it
        self.unsaved: dict[int, Unsaved] = {}
        self.offsets: dict[tuple[str, int], int] = {}  # last offset handled per input topic-partition
        self.lag: dict[tuple[str, int], int] = {}  # records behind the high-water mark (set by the worker)
        self.prune_due: dict[int, list[tuple[str, int]]] = defaultdict(list)
        self.future_limit = -math.inf  # records stamped later are checked against the wall clock
        self.routing = Routing(config.partitions)

    def _new_engine(self) -> Engine:
        return Engine(self.config, clock=time.time, emit_partials=True)

    def engine(self, partition: int) -> Engine:
        engine = self.engines.get(partition)
        if engine is None:
            engine = self.engines[partition] = self._new_engine()
        return engine

    def watermark(self, partition: int) -> float:
        """A partition's event time: the slower of its two inputs (labels often trail predictions)."""
        marks = self.marks.get(partition)
        return -math.inf if marks is None else marks[2]

    def _marks(self, partition: int) -> list[float]:
        marks = self.marks.get(partition)
        if marks is None:
            marks = self.marks[partition] = [-math.inf, -math.inf, -math.inf]
        return marks

    def rebuild(self, table: Any) -> None:
        """Fresh engines fed with every stored record in timestamp order, with no watermark (so none
        is judged stale), then moved to the watermark each partition had reached. What was not
        saved yet is dropped: its messages were not committed, so Kafka delivers them again.
        One partition at a time, so only one partition's records are ever decoded at once."""
        self.marks = {}
        self.saved_marks = {}
        batches: dict[int, list[tuple[str, bytes]]] = defaultdict(list)
        self.prune_due.clear()
        self.unsaved.clear()
        for key, value in table.items():
            if key.startswith(WATERMARK_KEY):
                name = key[len(WATERMARK_KEY):]
                source, partition = name.split("/")
                marks = self._marks(int(partition))
                marks[SOURCES.index(source)] = self.saved_marks[name] = float(orjson.loads(value))
                marks[2] = min(marks[0], marks[1])
            elif key.startswith(BATCH_KEY):
                batches[int(key[len(BATCH_KEY):].split("/", 1)[0])].append((key, value))
        self.engines = {}
        stored = 0
        for partition in sorted(batches):
            rows: list[tuple[float, int, Prediction | Label]] = []
            for key, value in batches.pop(partition):
                self._schedule_prune(key, self._load_batch(value, rows), partition)
            stored += len(rows)
            rows.sort(key=lambda r: (r[0], r[1]))
            engine = self.engine(partition)
            for _, kind, record in rows:
                if kind == 0:
                    engine.prediction(record)  # type: ignore[arg-type]
                else:
                    engine.label(record)  # type: ignore[arg-type]
            del rows
            watermark = self.watermark(partition)
            if math.isfinite(watermark):
                engine.resume(watermark - self.config.watermark_lag_s)
            engine.flush()  # publish every open window's state once more: absolute partials, so harmless
            engine.dead_letters.clear()  # stored records were valid
        self.stale = False
        log.info("engines rebuilt from %d stored records in %d partitions", stored, len(self.engines))

    @staticmethod
    def _load_batch(value: bytes, into: list[tuple[float, int, Prediction | Label]]) -> float:
        """Append a batch's records as (timestamp, kind, record); return its latest timestamp."""
        batch = orjson.loads(value if value[:1] == b"{" else zlib.decompress(value))
        last = -math.inf
        for kind, slot, parse in ((0, "p", parse_prediction), (1, "l", parse_label)):
            for obj in batch[slot]:
                record = parse(obj)
                into.append((record.timestamp, kind, record))
                last = max(last, record.timestamp)
        return last

    def _schedule_prune(self, key: str, ts: float, partition: int) -> None:
        # Keep a batch until every window of its latest record is final, then forget it.
        deadline = ts + self.max_window_s + self.config.join_ttl_s + PRUNE_SLACK_S
        if math.isfinite(deadline):
            self.prune_due[int(deadline // 60)].append((key, partition))

    def handle(self, topic: str, partition: int, offset: int, raw: bytes | None) -> None:
        """Validate and feed the partition's engine; keep what it took in for the next save.
        Bad input is dead-lettered."""
        config = self.config
        source = "predictions" if topic == config.predictions_topic else "labels"
        engine = self.engine(partition)
        unsaved = self.unsaved.get(partition)
        if unsaved is None:
            unsaved = self.unsaved[partition] = Unsaved()
        ranges = unsaved.offsets
        for span in ranges:  # one range per topic, unless offsets skip (never, handled in order)
            if span[0] == topic and span[2] + 1 == offset:
                span[2] = offset
                break
        else:
            ranges.append([topic, offset, offset])
        self.offsets[(topic, partition)] = offset
        raw = raw or b""
        obj: Any = None
        try:
            obj = decode(raw, config.max_record_bytes)
            record = parse_prediction(obj) if source == "predictions" else parse_label(obj)
            if record.timestamp > self.future_limit and self._from_the_future(record.timestamp):
                raise InvalidRecord(future_reason(record.timestamp, time.time(), config.max_future_s,
                                                  "the worker's clock") or "")
        except InvalidRecord as exc:
            text = raw[:4096].decode("utf-8", errors="replace")
            rid = obj.get("request_id") if isinstance(obj, dict) else None
            where = {"request_id": rid[:256]} if isinstance(rid, str) else {}
            engine.dead_letter(source, text, str(exc), topic=topic, partition=partition, offset=offset, **where)
            return
        if source == "predictions":
            taken = engine.prediction(record, raw=obj, topic=topic, partition=partition, offset=offset)  # type: ignore[arg-type]
            if taken:
                unsaved.predictions.append(raw)
        else:
            taken = engine.label(record)  # type: ignore[arg-type]
            if taken:
                unsaved.labels.append(raw)
        if offset & ROUTE_SAMPLE_MASK == 0:
            self.routing.check(source, partition, record.request_id)
        ts = record.timestamp
        if taken:
            unsaved.size += len(raw)
            if ts > unsaved.last_ts:
                unsaved.last_ts = ts
        marks = self.marks.get(partition) or self._marks(partition)
        i = 0 if source == "predictions" else 1
        if ts > marks[i]:
            marks[i] = ts
            low = marks[0] if marks[0] < marks[1] else marks[1]
            if low > marks[2]:
                marks[2] = low
                engine.observe(low)

    def _from_the_future(self, ts: float) -> bool:
        """Whether ``ts`` is more than ``max_future_s`` ahead of the wall clock (see core.clock); the
        limit is kept, so the clock is read only for records past it."""
        max_future_s = self.config.max_future_s
        self.future_limit = time.time() + max_future_s if max_future_s > 0 else math.inf
        return ts > self.future_limit

    def save(self, table: Any, partition: int) -> list[list[Any]]:
        """Write what the partition took in since the last save as one batch, and its watermarks;
        return the [topic, first, last] offsets of the messages handled meanwhile, now safe to commit.
        (Inside faust this must run in that partition's event context: see ``in_partition``.)"""
        unsaved = self.unsaved.pop(partition, None)
        if unsaved is None:
            return []
        if unsaved.predictions or unsaved.labels:
            key = f"{BATCH_KEY}{partition}/{uuid.uuid4().hex}"
            batch = b'{"p":[' + b",".join(unsaved.predictions) + b'],"l":[' + b",".join(unsaved.labels) + b"]}"
            table[key] = zlib.compress(batch, BATCH_ZLIB_LEVEL)
            self._schedule_prune(key, unsaved.last_ts, partition)
        marks = self._marks(partition)
        for i, source in enumerate(SOURCES):
            name = f"{source}/{partition}"
            mark = marks[i]
            if mark != -math.inf and mark != self.saved_marks.get(name):
                table[f"{WATERMARK_KEY}{name}"] = orjson.dumps(mark)
                self.saved_marks[name] = mark
        return unsaved.offsets

    def unsaved_bytes(self, partition: int) -> int:
        unsaved = self.unsaved.get(partition)
        return 0 if unsaved is None else unsaved.size

    def prune(self, table: Any, partition: int) -> int:
        """Forget batches of this partition whose windows are all final (changelog deletes)."""
        horizon = int(self.watermark(partition) // 60)
        pruned = 0
        for bucket in [b for b in self.prune_due if b < horizon]:
            keep = []
            for key, part in self.prune_due.pop(bucket):
                if part != partition:
                    keep.append((key, part))
                elif key in table:
                    del table[key]
                    pruned += 1
            if keep:
                self.prune_due[bucket].extend(keep)
        return pruned

    def outputs(self) -> list[Output]:
        """(topic, key, value): partials keyed by model, and dead letters, since the last call."""
        config = self.config
        out: list[Output] = []
        for partition, engine in self.engines.items():
            for partial in engine.metric_records:
                value = {"partition": partition, "partial": partial}
                out.append((config.partials_topic, partial["model"].encode(), orjson.dumps(value)))
            for dead in engine.dead_letters:
                out.append((config.dead_letters_topic, None, orjson.dumps(dead)))
            engine.metric_records.clear()
            engine.dead_letters.clear()
        return out

    def heartbeat(self) -> bytes | None:
        """Each owned partition's watermark (None: not known yet), sent to every merger partition
        after the partials: windows close on them, and changed windows are merged at them."""
        if not self.engines:
            return None
        marks = {p: self.watermark(p) for p in self.engines}
        return orjson.dumps({"watermarks": {str(p): m if math.isfinite(m) else None for p, m in marks.items()}})

    def totals(self) -> tuple[Health, tuple[int, int], float]:
        """Health and pending counts summed over this process's partitions, and the lowest watermark."""
        total = Health()
        pending = [0, 0]
        for engine in list(self.engines.values()):
            for name, value in asdict(engine.health).items():
                if name == "label_lag_buckets":
                    total.label_lag_buckets = [a + b for a, b in zip(total.label_lag_buckets, value, strict=True)]
                else:
                    setattr(total, name, getattr(total, name) + value)
            for i, n in enumerate(engine.pending()):
                pending[i] += n
        watermark = min((self.watermark(p) for p in self.engines), default=-math.inf)
        return total, (pending[0], pending[1]), watermark

    def health(self) -> dict[str, Any]:
        """Where every consumed record went, summed over this process's partitions."""
        total, pending, _ = self.totals()
        health = {k: v for k, v in asdict(total).items() if k != "label_lag_buckets"}
        health.update(routing=self.routing.counts(),
                      pending_predictions=pending[0], pending_labels=pending[1],
                      balance=total.balance(*pending), partitions=sorted(self.engines),
                      app_id=self.config.app_id, pid=os.getpid(), emitted_at=time.time())
        return health


class Merge:
    """The merge agent: latest partial per (window, input partition), summed into one record.

    State is kept per merger partition (the partition of the partials topic an event came from):
    a heartbeat on one partition closes only that partition's windows, since only there is it
    known to follow every partial sent before it.
    """

    def __init__(self, config: Config, on_alerts: Callable[[list[dict[str, Any]]], None] | None = None,
                 on_record: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.config = config
        self.on_alerts = on_alerts  # delivery beyond the alerts topic (Alertmanager, webhook)
        self.on_record = on_record  # the Prometheus exposition
        self.rules = RuleBook(config.rules)
        self.specs = {w.name: w for w in config.windows}
        self.watermarks: dict[int, dict[int, float]] = defaultdict(dict)  # merger part. -> input part. -> wm
        self.open: dict[int, dict[str, float]] = defaultdict(dict)  # merger part. -> window key -> final at
        self.changed: dict[int, set[str]] = defaultdict(set)  # merger part. -> windows with new partials
        self.stale = True

    def rebuild(self, table: Any) -> None:
        self.open.clear()
        self.changed.clear()
        self.rules.states.clear()
        for key, entry in table.items():
            if key.startswith(RULES_KEY):
                for item in entry:
                    self.rules.states[(item["rule"], tuple(item["series"]))] = RuleState(**item["state"])
            elif not entry.get("_final"):
                partial = next(v for k, v in entry.items() if not k.startswith("_"))
                self.open[int(entry["_mp"])][key] = self._final_at(partial)
                self.changed[int(entry["_mp"])].add(key)  # emitted again: a crash may have come before it was
        self.stale = False

    def _final_at(self, partial: dict[str, Any]) -> float:
        spec: WindowSpec = self.specs[partial["window"]["name"]]
        end = spec.end(partial["window"]["start"])
        return math.inf if end is None else end + self.config.join_ttl_s + SWEEP_SLACK_S

    def handle(self, table: Any, here: int, offset: int, value: bytes | None) -> list[Output]:
        """One message of merger partition ``here``: a partial or a heartbeat. One that cannot be
        handled (a bug, or a message mlmon did not write) is dead-lettered with the reason."""
        try:
            body = orjson.loads(value or b"{}")
            if "partial" in body:
                self.on_partial(table, here, int(body["partition"]), body["partial"])
                return []
            marks = {int(p): None if m is None else float(m) for p, m in body["watermarks"].items()}
            return self.on_heartbeat(table, here, marks)
        except Exception as exc:
            log.exception("merge failed on partition %s offset %s", here, offset)
            dead = {"source": "partials", "reason": f"the merge agent failed: {exc!r}"[:1024],
                    "raw": (value or b"")[:4096].decode("utf-8", "replace"),
                    "topic": self.config.partials_topic, "partition": here, "offset": offset}
            return [(self.config.dead_letters_topic, None, orjson.dumps(dead))]

    def on_partial(self, table: Any, here: int, partition: int, partial: dict[str, Any]) -> None:
        """A partial from input ``partition`` arrived on merger partition ``here``: stored, and
        merged into a record at the heartbeat that follows it (once for all input partitions)."""
        key = record_key(partial)
        entry = table.get(key)
        if entry is not None and entry.get("_final"):
            return  # a replay of a window that was already closed
        entry = dict(entry or {})
        entry[str(partition)] = partial
        entry["_mp"] = here
        table[key] = entry
        self.open[here].setdefault(key, self._final_at(partial))
        self.changed[here].add(key)

    def on_heartbeat(self, table: Any, here: int, watermarks: dict[int, float | None]) -> list[Output]:
        """A worker's input partitions' watermarks (None: not known yet) after its partials: close
        every window of this merger partition that all input partitions have passed, then emit a
        record for each other window that changed."""
        known = self.watermarks[here]
        for partition, watermark in watermarks.items():
            if watermark is not None and watermark > known.get(partition, -math.inf):
                known[partition] = watermark
        out: list[Output] = []
        changed = self.changed.pop(here, set())
        if len(known) >= self.config.partitions:
            low = min(known.values())
            open_here = self.open[here]
            for key in [k for k, final_at in open_here.items() if final_at <= low]:
                del open_here[key]
                changed.discard(key)
                entry = table.get(key)
                if entry is None or entry.get("_final"):
                    continue
                out += self._emit(table, key, entry, final=True)
                table[key] = {"_final": True, "_mp": here}
        for key in sorted(changed):
            entry = table.get(key)
            if entry is not None and not entry.get("_final"):
                out += self._emit(table, key, entry, final=False)
        return out

    def _emit(self, table: Any, key: str, entry: dict[str, Any], final: bool) -> list[Output]:
        partials = [v for k, v in entry.items() if not k.startswith("_")]
        first = partials[0]
        now = time.time()
        record = metric_record(first["model"], first["model_version"], first["segment"], first["window"],
                               merge_states(partials), final, rfc3339(now))
        events = self.rules.evaluate(record, segment_label(first["segment"]), now)
        if self.on_record is not None:
            self.on_record(record)
        if events and self.on_alerts is not None:
            self.on_alerts(events)
        config = self.config
        out: list[Output] = [(config.metrics_topic, key.encode(), orjson.dumps(record))]
        out += [(config.alerts_topic, e["fingerprint"].encode(), orjson.dumps(e)) for e in events]
        if self.rules.rules:
            self._save_rules(table, first["model"])
        return out

    def _save_rules(self, table: Any, model: str) -> None:
        states = [{"rule": rule, "series": list(series), "state": asdict(state)}
                  for (rule, series), state in self.rules.states.items() if series[0] == model]
        table[f"{RULES_KEY}{model}"] = states


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
            beat = join.heartbeat()
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


@functools.cache
def glibc() -> Any:
    """glibc, for its malloc's settings; None under another C library."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018  (both present, or not glibc)
    except (OSError, AttributeError):
        return None
    return libc


def map_large_blocks_apart() -> None:
    """Have glibc's malloc give every block of 128 KiB or more its own mapping, returned to the
    system when freed. By default its threshold rises to the largest block freed so far, and later
    blocks of that size stay on its heap once freed (dict tables left behind as they double,
    rocksdb memtables): 262 against 211 bytes of RSS per pending prediction, 553 against 314 after
    a restart (benchmarks/run.py, 1M pending). Nothing happens off glibc."""
    libc = glibc()
    if libc is not None:
        libc.mallopt(M_MMAP_THRESHOLD, 128 * 1024)


def return_free_memory() -> None:
    """Hand the free pages inside glibc's heaps back to the system (``malloc_trim``): blocks under
    128 KiB freed between live ones leave holes that glibc keeps. With compressed batches the heap
    held about 9 MB more and a restarted worker 18 to 28 more bytes per pending prediction, which
    this returns (docs/worker.md). 0.2 ms at the median, 4 ms at most, once a second and after
    each rebuild."""
    libc = glibc()
    if libc is not None:
        libc.malloc_trim(0)


def run_worker(config: Config, loglevel: str = "info") -> int:
    map_large_blocks_apart()
    check_worker_config(config)
    faust_credentials(config)  # refuse unsupported security settings before touching Kafka
    ensure_topics(config)
    app = build_app(config)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    worker.execute_from_commandline()
    return 0
