"""What a join partition took in and has not saved yet: records waiting for its engine
(:class:`Queue`), and what its engine took since the batch table last heard of it (:class:`Unsaved`),
with the offsets of the messages they came from.

>>> unsaved = Unsaved()
>>> unsaved.note("predictions", 5, 9)
>>> unsaved.note("predictions", 10, 10)
>>> unsaved.note("labels", 3, 3)
>>> unsaved.offsets
[['predictions', 5, 10], ['labels', 3, 3]]
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import orjson

from stream.core.records import Label, Prediction

__all__ = ["Origin", "Queue", "Unsaved"]

Origin = tuple[str, int, int]  # (topic, partition, offset) of the message a record came in


@dataclass
class Queue:
    """Records of one partition waiting for its engine (``Join.settle``): each with its raw JSON
    and where it came from."""

    records: list[Prediction | Label] = field(default_factory=list)
    raws: list[bytes] = field(default_factory=list)
    origins: list[Origin] = field(default_factory=list)
    size: int = 0

    def add(self, record: Prediction | Label, raw: bytes, origin: Origin) -> None:
        self.records.append(record)
        self.raws.append(raw)
        self.origins.append(origin)
        self.size += len(raw)

    def where(self, i: int) -> dict[str, Any]:
        """What the engine's call for record ``i`` takes besides it: where it came from (for its
        dead letter), and a prediction's raw JSON (its dead letter's form, should its model
        refuse it). Made only when the engine asks (``Engine.take_many``)."""
        topic, partition, offset = self.origins[i]
        if type(self.records[i]) is Prediction:
            return {"raw": orjson.Fragment(self.raws[i]), "topic": topic, "partition": partition, "offset": offset}
        return {"topic": topic, "partition": partition, "offset": offset}


@dataclass
class Unsaved:
    """What one partition's engine took in since the table last heard of it."""

    predictions: list[bytes] = field(default_factory=list)  # raw JSON, as consumed
    labels: list[bytes] = field(default_factory=list)
    offsets: list[list[Any]] = field(default_factory=list)  # [topic, first, last]: the messages handled
    size: int = 0
    last_ts: float = -math.inf

    def note(self, topic: str, first: int, last: int) -> None:
        """Messages ``first`` to ``last`` of ``topic`` handled: committed once the batch is saved.
        One range per topic, as each is handled in offset order."""
        for span in reversed(self.offsets):
            if span[0] == topic:
                if span[2] + 1 == first:
                    span[2] = last
                    return
                break
        self.offsets.append([topic, first, last])
