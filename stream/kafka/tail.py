"""``mlmon metrics tail`` and ``mlmon alerts tail``: read the output topics in a readable form."""

from __future__ import annotations

import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any, TextIO

import orjson
from confluent_kafka import Consumer, KafkaError

from stream.config import Config
from stream.core.keys import segment_label
from stream.kafka.admin import client_settings

__all__ = ["format_alert", "format_metric", "read", "tail"]


def read(config: Config, topic: str, follow: bool = False, from_beginning: bool = True,
         timeout_s: float = 60.0, stop: threading.Event | None = None) -> Iterator[tuple[bytes | None, dict[str, Any]]]:
    """Records of a topic as (key, decoded value): up to its current end, or with ``follow`` until
    ``stop`` is set (forever without one)."""
    consumer = Consumer({
        **client_settings(config),
        "group.id": f"mlmon-tail-{uuid.uuid4()}",
        "auto.offset.reset": "earliest" if from_beginning else "latest",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
    })
    consumer.subscribe([topic])
    at_end: set[int] = set()
    deadline = time.monotonic() + timeout_s
    try:
        while (follow and not (stop and stop.is_set())) or (not follow and time.monotonic() < deadline):
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            error = msg.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF and msg.partition() is not None:
                    at_end.add(int(msg.partition()))  # type: ignore[arg-type]
                    assignment = consumer.assignment()
                    if not follow and assignment and at_end >= {tp.partition for tp in assignment}:
                        return
                continue
            at_end.discard(msg.partition() or 0)
            try:
                value = orjson.loads(msg.value() or b"null")
            except orjson.JSONDecodeError:
                value = {"undecodable": (msg.value() or b"")[:200].decode("utf-8", "replace")}
            yield msg.key(), value
    finally:
        consumer.close()


def format_metric(record: dict[str, Any]) -> str:
    m = record.get("metrics", {})
    segment = segment_label(record.get("segment", {})) or "all"
    window = record.get("window", {})
    start = window.get("start")
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start)) if start is not None else ""
    figures = "  ".join(f"{name} {m[name]:.4f}" for name in ("accuracy", "f1_macro", "mae", "rmse")
                        if isinstance(m.get(name), int | float))
    coverage = record.get("label_coverage")
    cov = f"  coverage {coverage:.1%}" if isinstance(coverage, int | float) else ""
    final = "final" if record.get("final") else "open "
    return (f"{final} {record.get('model')} {record.get('model_version')} [{segment}] "
            f"{window.get('name')} {when} n={record.get('n')}  {figures}{cov}")


def format_alert(event: dict[str, Any]) -> str:
    status = str(event.get("status", "?")).upper()
    labels = event.get("labels", {})
    return (f"{status:<8} {event.get('alertname')} {labels.get('model')} {labels.get('model_version')} "
            f"{labels.get('window')} value={event.get('value'):.4g} n={event.get('n')} "
            f"since {event.get('starts_at')}: {event.get('annotations', {}).get('summary', '')}")


def tail(config: Config, topic: str, as_json: bool, follow: bool, out: TextIO = sys.stdout) -> int:
    formatter = format_metric if topic == config.metrics_topic else format_alert
    shown = 0
    for _, value in read(config, topic, follow=follow):
        out.write((orjson.dumps(value).decode() if as_json else formatter(value)) + "\n")
        out.flush()
        shown += 1
    return shown
