"""The worker's runtime without a broker: input messages to final metric records and health."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import orjson
from faust.types import TP

from stream.config import Config
from stream.kafka.join_agent import Join
from stream.kafka.merge_agent import Merge
from stream.kafka.offsets import Handled
from stream.kafka.runtime import Runtime

START = 1_767_225_600.0


class Table(dict[str, Any]):
    """A faust table's stand-in: a dict whose writes faust can always route."""

    name = "table"

    def _verify_source_topic_partitions(self, source_topic: str) -> None:
        pass


class Consumer:
    def __init__(self, topics: list[str], partitions: int = 1) -> None:
        self.tps = {TP(t, p) for t in topics for p in range(partitions)}
        self._committed_offset: dict[TP, int] = {}

    def assignment(self) -> set[TP]:
        return self.tps

    async def earliest_offsets(self, *tps: TP) -> dict[TP, int]:
        return dict.fromkeys(tps, 0)

    def highwater(self, tp: TP) -> int:
        return 0


def message(offset: int, value: dict[str, Any] | bytes) -> Any:
    return SimpleNamespace(offset=offset, value=value if isinstance(value, bytes) else orjson.dumps(value))


def test_messages_become_partials_then_final_records_and_a_health_record_that_balances() -> None:
    """Each request's prediction and label on different partitions: half of them forwarded."""
    config = Config.from_mapping({"partitions": 2, "windows": ["tumbling 5m", "cumulative"], "join_ttl": "60s"})
    sent: list[tuple[str, bytes | None, bytes, int | None]] = []
    repartitioned: dict[int, list[bytes]] = {0: [], 1: []}  # the repartition topic's partitions

    async def send(topic: str, key: bytes | None, value: bytes, partition: int | None) -> None:
        sent.append((topic, key, value, partition))

    async def send_records(topic: str, records: Any) -> None:
        for partition, key, value in records:
            if topic == config.repartition_topic:
                repartitioned[partition].append(value)
            else:
                sent.append((topic, key, value, partition))

    topics = [config.predictions_topic, config.labels_topic, config.partials_topic, config.repartition_topic]
    app = SimpleNamespace(rebalancing=False, consumer=Consumer(topics, partitions=2))
    handled = Handled()
    runtime = Runtime(config, app, Table(), Table(), send, Join(config), Merge(config), handled, send_records)

    async def deliver() -> None:
        """What the repartition topic holds, read once: then a flush."""
        for partition, values in repartitioned.items():
            start = handled.reach(TP(config.repartition_topic, partition), 0)
            await runtime.join_inputs(TP(config.repartition_topic, partition),
                                      [message(start + i, v) for i, v in enumerate(values[start:])])
        await runtime.flush()

    async def scenario() -> None:
        tick = START + 86400  # a day on: every window of the first pairs is final
        for partition in (0, 1):  # predictions of even requests on 0, labels on 1, and the other way round
            ids = [f"r{i}" for i in range(partition, 20, 2)] + [f"tick{partition}"]
            predictions = [message(n, {"request_id": rid, "model": "m", "timestamp": tick if rid[0] == "t" else
                                       START + int(rid[1:]), "prediction": "b" if rid[1:] in ("0", "4", "8", "12", "16")
                                       else "a"}) for n, rid in enumerate(ids)]
            labels = [message(n, {"request_id": rid, "timestamp": tick if rid[0] == "t" else START + int(rid[1:]) + 1,
                                  "label": "a"}) for n, rid in enumerate(ids)]
            await runtime.join_inputs(TP(config.predictions_topic, partition), predictions)
            await runtime.join_inputs(TP(config.labels_topic, 1 - partition), labels)
        for _ in range(3):  # forwards, then heartbeats, then watermarks that heard them
            await runtime.flush()
            await deliver()
        merged = 0
        for _ in range(2):  # partials and heartbeats, the model's admission (see registry), heartbeats again
            runtime.health_due = 0.0  # a health record now
            await runtime.flush()
            while merged < len(partials := [v for t, _, v, p in sent if t == config.partials_topic and p in (0, None)]):
                await runtime.merge_one(SimpleNamespace(tp=TP(config.partials_topic, 0), offset=merged, partition=0),
                                        partials[merged])  # merger 0 (with what it says to itself)
                merged += 1

    asyncio.run(scenario())
    records = [orjson.loads(v) for t, _, v, _ in sent if t == config.metrics_topic]
    finals = [r for r in records if r["final"] and r["window"]["start"] == START]
    assert [(r["window"]["name"], r["n"], r["metrics"]["accuracy"]) for r in finals] == [("tumbling_5m", 20, 0.75)]
    cumulative = [r for r in records if r["window"]["name"] == "cumulative"][-1]
    assert (cumulative["n"], cumulative["predictions"]) == (22, 22)
    health = [orjson.loads(v) for t, _, v, _ in sent if t == config.health_topic][-1]
    assert health["pairs"] == 22 and health["balance"] == {"predictions": 0, "labels": 0}
    assert health["stalled_partitions"] == [] and health["late_partials"] == 0
    assert 0 < health["repartitioned"]["predictions"] < 22 and 0 < health["repartitioned"]["labels"] < 22
    assert {handled.reach(TP(topic, p), 0) for topic in (config.predictions_topic, config.labels_topic)
            for p in (0, 1)} == {11}  # every input message handled
