"""``mlmon produce``: the load generator and demo producer (a simulated classifier, or JSONL files).

Predictions and labels go to their topics keyed by ``request_id`` with Java's murmur2
partitioner (what faust and Kafka's own clients use), so both topics are co-partitioned.
Records are sent in timestamp order: labels when the event clock reaches their timestamp.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import KafkaError, Message, Producer

from stream.config import Config
from stream.kafka.admin import client_settings
from stream.simulate import Scenario, streams

__all__ = ["Outgoing", "ProduceReport", "closing_ticks", "file_records", "produce", "producer", "scenario_records"]

Outgoing = tuple[float, int, dict[str, Any]]  # (timestamp, 0 prediction | 1 label, record)


def producer(config: Config, **overrides: Any) -> Producer:
    settings = {
        **client_settings(config),
        "acks": "all",
        "enable.idempotence": True,  # retries after a broker outage never duplicate a record
        "partitioner": "murmur2_random",
        "linger.ms": 5,
        "delivery.timeout.ms": 300_000,
        **overrides,
    }
    return Producer(settings)


def closing_ticks(count: int, ts: float) -> Iterator[Outgoing]:
    """``count`` predictions of model ``tick`` at ``ts`` and their labels: sent after a stream, with
    enough request ids to reach every partition, they move every partition's event time to ``ts``
    and so close every earlier window."""
    for i in range(count):
        yield ts, 0, {"request_id": f"tick-{i}", "model": "tick", "timestamp": ts, "prediction": "x"}
        yield ts, 1, {"request_id": f"tick-{i}", "timestamp": ts, "label": "x"}


def scenario_records(scenario: Scenario) -> Iterator[Outgoing]:
    predictions, labels = streams(scenario)
    return heapq.merge(((p["timestamp"], 0, p) for p in predictions), ((x["timestamp"], 1, x) for x in labels),
                       key=lambda item: (item[0], item[1]))


def file_records(predictions: Path | None, labels: Path | None) -> Iterator[Outgoing]:
    """Lines of JSONL files, in timestamp order when they are; bad lines are sent as they are,
    so the worker's dead-letter handling can be exercised end to end."""
    def lines(path: Path | None, kind: int) -> Iterator[Outgoing]:
        if path is None:
            return
        with path.open("rb") as rows:
            for row in rows:
                if row.strip():
                    try:
                        ts = float(orjson.loads(row).get("timestamp", 0))
                    except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
                        ts = 0.0
                    yield ts, kind, {"__raw__": row.rstrip(b"\n")}
    return heapq.merge(lines(predictions, 0), lines(labels, 1), key=lambda item: (item[0], item[1]))


@dataclass
class ProduceReport:
    predictions: int = 0
    labels: int = 0
    failed: int = 0
    seconds: float = 0.0


def produce(config: Config, records: Iterable[Outgoing], rate_per_s: float = 0.0, **settings: Any) -> ProduceReport:
    """Send every record; ``rate_per_s`` paces predictions (0: as fast as the broker takes them);
    ``settings`` override the producer's (librdkafka names, ``.`` as ``_``)."""
    report = ProduceReport()
    client = producer(config, **{name.replace("_", "."): value for name, value in settings.items()})
    topics = (config.predictions_topic, config.labels_topic)
    started = time.monotonic()

    def delivered(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            report.failed += 1

    for _, kind, record in records:
        raw = record.get("__raw__")
        value = raw if raw is not None else orjson.dumps(record)
        key = _key(record, raw)
        while True:
            try:
                client.produce(topics[kind], key=key, value=value, on_delivery=delivered)
                break
            except BufferError:  # the local queue is full: let deliveries drain
                client.poll(0.1)
        client.poll(0)
        if kind == 0:
            report.predictions += 1
            if rate_per_s > 0:
                ahead = report.predictions / rate_per_s - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
        else:
            report.labels += 1
    remaining = client.flush(120)
    report.failed += remaining
    report.seconds = time.monotonic() - started
    return report


def _key(record: dict[str, Any], raw: bytes | None) -> bytes | None:
    if raw is None:
        return str(record["request_id"]).encode()
    try:
        rid = orjson.loads(raw).get("request_id")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return rid.encode() if isinstance(rid, str) else None
