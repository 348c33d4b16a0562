"""A :class:`Join` driven as one worker reading every input partition drives it: forwarded records
and heartbeats go through a stand-in for the repartition topic, and each flush moves watermarks."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import orjson

from stream.kafka.join_agent import Join


class OneWorker:
    def __init__(self, join: Join) -> None:
        self.join = join
        config = join.config
        self.inputs = [(topic, p) for topic in (config.predictions_topic, config.labels_topic)
                       for p in range(config.partitions)]
        self.offsets: dict[tuple[str, int], int] = defaultdict(int)  # next offset per topic-partition

    def send(self, topic: str, partition: int, record: dict[str, Any] | bytes) -> None:
        """One input message, then whatever it forwarded."""
        value = record if isinstance(record, bytes) else orjson.dumps(record)
        self._handle(topic, partition, value)
        self.deliver()

    def deliver(self) -> None:
        forwards, self.join.forwards = self.join.forwards, []
        self.join.passed.clear()
        for partition, _, value in forwards:
            self._handle(self.join.config.repartition_topic, partition, value)

    def flush(self, now: float) -> None:
        """As the worker's flush timer: watermarks moved, then a heartbeat to every partition."""
        join = self.join
        partitions = range(join.config.partitions)
        join.advance(self.inputs, partitions, now)
        beat = join.forward_heartbeat(self.inputs)
        self.deliver()
        for partition in partitions:
            self._handle(join.config.repartition_topic, partition, beat)

    def _handle(self, topic: str, partition: int, value: bytes) -> None:
        offset = self.offsets[(topic, partition)]
        self.offsets[(topic, partition)] = offset + 1
        self.join.handle(topic, partition, offset, value)
