"""Report predictions and labels from a model service: two calls, checked where they are made.

>>> reporter = Reporter(broker="127.0.0.1:1", model="fraud", model_version="v3")  # no broker needed to start
>>> reporter.prediction("r-1", "1", scores={"0": 0.1, "1": 0.9}, segment={"country": "DE"})
>>> reporter.prediction("r-2", "1", scores={"1": 1.5})
Traceback (most recent call last):
...
stream.core.errors.InvalidRecord: prediction r-2: 'scores'['1'] must be a probability in [0, 1], got 1.5
>>> reporter.stats().accepted, reporter.stats().invalid
(1, 1)
>>> reporter.close(timeout_s=0).failed  # the broker never answered: what was waiting is reported
1

Each record is checked by the rules the worker applies (``stream.core.records``, the clock limit,
the size limit, classes against ``regression_models``) and raises :class:`InvalidRecord` in the
caller's thread. Valid records are handed to a confluent-kafka producer configured as a careful
team would (idempotent, ``acks=all``, keyed by ``request_id`` with Kafka's murmur2 partitioner,
compressed, a bounded local buffer) and the call returns: a model service never waits for the
broker. When the buffer is full the record is dropped and counted (``when_full="drop"``, the
default), or the call waits up to ``block_timeout_s`` for room (``"block"``). Delivery failures
are counted, logged once per kind and passed to ``on_error``. Every method is thread-safe; from
asyncio code, call ``prediction``/``label`` directly (they do not block) and ``flush``/``close``
through ``asyncio.to_thread``.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import KafkaError, Message

from stream.config import Config, bootstrap_servers
from stream.core.clock import future_reason
from stream.core.records import class_name, parse_label, parse_prediction, target_number
from stream.errors import InvalidRecord

__all__ = ["WHEN_FULL", "Reporter", "ReporterStats"]

log = logging.getLogger("mlmon.reporter")
WHEN_FULL = ("drop", "block")
ErrorCallback = Callable[[str, str, str], None]  # (kind: prediction | label, request_id, error)


@dataclass(frozen=True)
class ReporterStats:
    """Every call is one of: ``invalid`` (raised), ``dropped`` (the buffer was full) or
    ``accepted``; each accepted record is ``delivered``, ``failed`` or still ``waiting``."""

    accepted: int = 0
    delivered: int = 0
    failed: int = 0
    waiting: int = 0
    dropped: int = 0
    invalid: int = 0


class Reporter:
    """Sends predictions and labels to mlmon's input topics. ``kafka_options``: librdkafka settings
    (SASL, SSL, or any producer setting) over the defaults."""

    def __init__(self, broker: str = "127.0.0.1:9092", model: str | None = None, model_version: str = "unknown", *,
                 predictions_topic: str = "predictions", labels_topic: str = "labels",
                 kafka_options: dict[str, Any] | None = None, buffer_records: int = 100_000,
                 when_full: str = "drop", block_timeout_s: float = 1.0, on_error: ErrorCallback | None = None,
                 config: Config | None = None) -> None:
        if when_full not in WHEN_FULL:
            raise ValueError(f"when_full must be one of {WHEN_FULL}, got {when_full!r}")
        self.config = config or Config()
        self.model = model
        self.model_version = model_version
        self.topics = (predictions_topic, labels_topic)
        self.when_full = when_full
        self.block_timeout_s = block_timeout_s
        self.on_error = on_error
        self._lock = threading.Lock()
        self._counts = {"accepted": 0, "delivered": 0, "failed": 0, "dropped": 0, "invalid": 0}
        self._logged: set[str] = set()  # kinds of failure logged already
        from stream.kafka.produce import producer  # the same settings as `mlmon produce`

        settings = {"compression.type": "lz4", "queue.buffering.max.messages": buffer_records,
                    "queue.buffering.max.kbytes": 65536, "client.id": "mlmon-reporter",
                    **(kafka_options or {})}
        self._producer = producer(Config(broker=bootstrap_servers(broker)), **settings)
        self._closed = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="mlmon-reporter", daemon=True)
        self._poller.start()

    @classmethod
    def from_config(cls, config: str | Path | Config, model: str | None = None, model_version: str = "unknown",
                    **options: Any) -> Reporter:
        """A reporter for a worker's configuration: its broker, topics, ``kafka_options`` and limits."""
        config = config if isinstance(config, Config) else Config.load(config)
        kafka_options = {**config.kafka_options, **options.pop("kafka_options", {})}
        return cls(config.broker, model, model_version, predictions_topic=config.predictions_topic,
                   labels_topic=config.labels_topic, kafka_options=kafka_options, config=config, **options)

    @staticmethod
    def new_request_id() -> str:
        """A fresh request id, for services that have none of their own."""
        return uuid.uuid4().hex

    # ----------------------------------------------------------------- calls

    def prediction(self, request_id: str | int | uuid.UUID, prediction: str | int | float | bool, *,
                   scores: dict[str, float] | None = None, segment: dict[str, str] | None = None,
                   timestamp: float | str | None = None, model: str | None = None,
                   model_version: str | None = None) -> None:
        """Report one prediction (``timestamp``: epoch seconds or RFC 3339, by default now)."""
        record: dict[str, Any] = {
            "request_id": _request_id(request_id), "model": model or self.model,
            "model_version": model_version or self.model_version,
            "timestamp": time.time() if timestamp is None else timestamp, "prediction": prediction,
        }
        if scores is not None:
            record["scores"] = scores
        if segment is not None:
            record["segment"] = segment
        self._send(0, record)

    def label(self, request_id: str | int | uuid.UUID, label: str | int | float | bool, *,
              timestamp: float | str | None = None) -> None:
        """Report the ground truth of one request (``timestamp`` by default now)."""
        self._send(1, {"request_id": _request_id(request_id), "label": label,
                       "timestamp": time.time() if timestamp is None else timestamp})

    def _send(self, kind: int, record: dict[str, Any]) -> None:
        try:
            value = self._check(kind, record)
        except InvalidRecord as exc:
            self._count("invalid")
            raise InvalidRecord(f"{_KINDS[kind]} {str(record.get('request_id'))[:64]}: {exc}") from None
        key = record["request_id"].encode()
        deadline = None
        while True:
            try:
                self._producer.produce(self.topics[kind], value=value, key=key, on_delivery=self._delivered)
                self._count("accepted")
                return
            except BufferError:
                if self.when_full == "drop":
                    self._count("dropped")
                    self._note("buffer full", "the local buffer is full (broker away or too slow): records "
                               "are dropped and counted (stats().dropped)")
                    return
                deadline = deadline or time.monotonic() + self.block_timeout_s
                if time.monotonic() >= deadline:
                    self._count("dropped")
                    return
                time.sleep(0.005)

    def _check(self, kind: int, record: dict[str, Any]) -> bytes:
        """The record's bytes, once it passes what the worker would check."""
        config = self.config
        if kind == 0:
            parsed: Any = parse_prediction(record)
            if config.is_regression(parsed.model):
                target_number(parsed.value)
            else:
                class_name(parsed.value)
        else:
            parsed = parse_label(record)  # its class is checked against its prediction's model by the worker
        reason = future_reason(parsed.timestamp, time.time(), config.max_future_s, "this machine's clock")
        if reason:
            raise InvalidRecord(reason)
        try:
            value = orjson.dumps(record)
        except TypeError as exc:  # e.g. a score's class that is not a string
            raise InvalidRecord(f"not JSON: {exc}") from None
        if len(value) > config.max_record_bytes:
            raise InvalidRecord(f"record is {len(value)} bytes, over the limit of {config.max_record_bytes}")
        return value

    # -------------------------------------------------------------- delivery

    def _delivered(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            self._count("delivered")
            return
        self._count("failed")
        kind = "prediction" if msg.topic() == self.topics[0] else "label"
        self._note(err.name(), f"{kind}s could not be delivered: {err.str()} (counted in stats().failed)")
        if self.on_error is not None:
            try:
                self.on_error(kind, (msg.key() or b"").decode(errors="replace"), err.str())
            except Exception:  # the service's callback must not stop deliveries
                log.exception("on_error raised")

    def _poll(self) -> None:
        while not self._closed.is_set():
            self._producer.poll(0.1)

    def _count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    def _note(self, kind: str, message: str) -> None:
        if kind not in self._logged:
            self._logged.add(kind)
            log.warning("mlmon reporter: %s", message)

    def stats(self) -> ReporterStats:
        with self._lock:
            counts = dict(self._counts)
        waiting = counts["accepted"] - counts["delivered"] - counts["failed"]
        return ReporterStats(waiting=waiting, **counts)

    def flush(self, timeout_s: float = 10.0) -> int:
        """Wait up to ``timeout_s`` for what is buffered to be delivered; return how many are not."""
        self._producer.flush(timeout_s)
        return self.stats().waiting

    def close(self, timeout_s: float = 10.0) -> ReporterStats:
        """Flush, then give up on what is still waiting (counted as failed); the final counts."""
        if not self._closed.is_set():
            self._producer.flush(timeout_s)
            self._closed.set()
            self._poller.join()
            self._producer.purge()
            self._producer.flush(0)  # the purged records' failures are counted
            stats = self.stats()
            if stats.failed or stats.dropped:
                log.warning("mlmon reporter closed: %d records delivered, %d failed, %d dropped",
                            stats.delivered, stats.failed, stats.dropped)
        return self.stats()

    def __enter__(self) -> Reporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_KINDS = ("prediction", "label")


def _request_id(value: str | int | uuid.UUID) -> Any:
    """Strings, integers and UUIDs as text; anything else is left for the check to refuse."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | uuid.UUID):
        return str(value)
    return value
