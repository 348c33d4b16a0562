"""Which partition joins a record, and how records on another one get there.

The worker joins a prediction and its label on the partition Kafka's default (murmur2)
partitioner gives the key ``request_id`` among ``partitions``, as ``mlmon produce`` and Java
clients place them. Producers that send no key, or use librdkafka's default partitioner
(``consistent_random``, CRC32: confluent-kafka's default), or a topic with another partition
count, put records elsewhere: the worker reads each record's ``request_id`` from its value and
forwards a record that arrived on another partition through the internal repartition topic, to
the partition of its request. A record already on its partition costs one hash (0.5 µs).

Messages on the repartition topic are one kind byte then a payload:

- ``p`` / ``l`` + the prediction's / label's JSON, as the producer wrote it;
- ``h`` + a heartbeat: each input partition the sending worker reads (``"predictions/3"``), the
  event time it has read up to (everything it forwarded from there below that time was sent
  before), and which of them are idle. A partition's event time waits for every input's, so no
  forwarded record reaches its partition after that partition's windows closed.

>>> partition_of("3f2504e0-4f89-11d3-9a0c-0305e82c3301", 4)  # as Java's producer would place it
3
>>> forwarded(b"l" + b'{"request_id": "r1", "label": 1}')
('labels', b'{"request_id": "r1", "label": 1}')
>>> beat = heartbeat({"labels/0": 12.5, "predictions/0": None}, idle={"predictions/0"})
>>> read_heartbeat(beat[1:])
({'labels/0': 12.5, 'predictions/0': None}, {'predictions/0'})
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
from murmurhash2 import murmurhash2

__all__ = [
    "HEARTBEAT",
    "KINDS",
    "WARN_EVERY_S",
    "Forwarding",
    "forwarded",
    "heartbeat",
    "partition_of",
    "read_heartbeat",
    "source_name",
]

log = logging.getLogger("mlmon.worker")
WARN_EVERY_S = 60.0
MURMUR2_SEED = 0x9747B28C  # Kafka's (Java's DefaultPartitioner / BuiltInPartitioner)
KINDS = {"predictions": b"p", "labels": b"l"}
HEARTBEAT = b"h"
_SOURCES = {ord(kind): source for source, kind in KINDS.items()}


def partition_of(request_id: str, partitions: int) -> int:
    """The partition Kafka's default partitioner (murmur2, as Java's) gives the key ``request_id``."""
    return (murmurhash2(request_id.encode(), MURMUR2_SEED) & 0x7FFFFFFF) % partitions


def source_name(source: str, partition: int) -> str:
    """An input partition's name in heartbeats and in the batch table: ``predictions/3``."""
    return f"{source}/{partition}"


def forwarded(value: bytes) -> tuple[str, bytes]:
    """A forwarded record's input (``predictions`` or ``labels``) and JSON; KeyError for a heartbeat."""
    return _SOURCES[value[0]], value[1:]


def heartbeat(marks: dict[str, float | None], idle: set[str]) -> bytes:
    return HEARTBEAT + orjson.dumps({"marks": marks, "idle": sorted(idle)})


def read_heartbeat(payload: bytes) -> tuple[dict[str, float | None], set[str]]:
    beat: dict[str, Any] = orjson.loads(payload)
    return beat["marks"], set(beat["idle"])


class Forwarding:
    """Records forwarded to another partition, counted per input, with a note in the log once a
    minute per input saying why and what it costs."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {"predictions": 0, "labels": 0}
        self.noted_at: dict[str, float] = {}

    def count(self, source: str, partition: int, right: int, request_id: str) -> None:
        self.counts[source] += 1
        now = time.monotonic()
        if now - self.noted_at.get(source, -WARN_EVERY_S) >= WARN_EVERY_S:
            self.noted_at[source] = now
            log.info("%s: request %r came on partition %d, its partition is %d: forwarded through the "
                     "repartition topic (%d so far). Keying records by request_id with Kafka's default "
                     "(murmur2) partitioner saves that hop (see README, Producers)", source,
                     request_id[:64], partition, right, self.counts[source])
