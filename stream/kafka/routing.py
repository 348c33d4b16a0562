"""Whether producers put each record on the partition of its ``request_id``.

The worker joins a prediction and its label only when both sit on the same input partition: the
one Kafka's default (murmur2) partitioner picks for the key ``request_id``, as ``mlmon produce``
and Java clients do. A producer that sends no key, or uses librdkafka's default partitioner
(``consistent_random``, CRC32: confluent-kafka's default), puts most records elsewhere; their
predictions expire and their labels are orphaned. A sample of the records (one offset in 64) is
checked, at about 12 µs a check, and what is found goes into the health record, Prometheus
(``mlmon_misrouted_records_sampled_total``) and a warning a minute per input.

>>> routing = Routing(partitions=4)
>>> routing.check("labels", 3, "3f2504e0-4f89-11d3-9a0c-0305e82c3301")  # murmur2 puts it on 3
True
>>> routing.check("labels", 0, "3f2504e0-4f89-11d3-9a0c-0305e82c3301")
False
>>> routing.counts()["labels"]
{'checked': 2, 'misrouted': 1}
"""

from __future__ import annotations

import logging
import time

from aiokafka.partitioner import murmur2

__all__ = ["ROUTE_SAMPLE_MASK", "WARN_EVERY_S", "Routing", "partition_of"]

log = logging.getLogger("mlmon.worker")
ROUTE_SAMPLE_MASK = 63  # offsets that are multiples of 64 are checked
WARN_EVERY_S = 60.0


def partition_of(request_id: str, partitions: int) -> int:
    """The partition Kafka's default partitioner (murmur2, as Java's) gives the key ``request_id``."""
    return int(murmur2(request_id.encode()) & 0x7FFFFFFF) % partitions


class Routing:
    """Sampled checks of input records' partitions against their ``request_id``, per input."""

    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        self.checked: dict[str, int] = {"predictions": 0, "labels": 0}
        self.misrouted: dict[str, int] = {"predictions": 0, "labels": 0}
        self.warned_at: dict[str, float] = {}

    def check(self, source: str, partition: int, request_id: str) -> bool:
        """Whether the record is on its request's partition; counted either way."""
        self.checked[source] += 1
        right = partition_of(request_id, self.partitions)
        if right == partition:
            return True
        self.misrouted[source] += 1
        now = time.monotonic()
        if now - self.warned_at.get(source, -WARN_EVERY_S) >= WARN_EVERY_S:
            self.warned_at[source] = now
            log.warning("%s: request %r came on partition %d, but its partition is %d: records are not keyed by "
                        "request_id with Kafka's default (murmur2) partitioner, so they cannot all be joined "
                        "(%d of %d sampled records so far; see README, Producers)", source, request_id[:64],
                        partition, right, self.misrouted[source], self.checked[source])
        return False

    def counts(self) -> dict[str, dict[str, int]]:
        return {source: {"checked": self.checked[source], "misrouted": self.misrouted[source]}
                for source in self.checked}
