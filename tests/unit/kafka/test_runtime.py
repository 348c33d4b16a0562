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
    def __init__(self, topics: list[str]) -> None:
        self.tps = {TP(t, 0) for t in topics}
        self._committed_offset: dict[TP, int] = {}

    def assignment(self) -> set[TP]:
        return self.tps

    async def earliest_offsets(self, *tps: TP) -> dict[TP, int]:
        return dict.fromkeys(tps, 0)

    def highwater(self, tp: TP) -> int:
        return 0


def test_messages_become_partials_then_final_records_and_a_health_record_that_balances() -> None:
    config = Config.from_mapping({"partitions": 1, "windows": ["tumbling 5m", "cumulative"], "join_ttl": "60s"})
    sent: list[tuple[str, bytes | None, bytes, int | None]] = []

    async def send(topic: str, key: bytes | None, value: bytes, partition: int | None) -> None:
        sent.append((topic, key, value, partition))

    app = SimpleNamespace(rebalancing=False, consumer=Consumer(
        [config.predictions_topic, config.labels_topic, config.partials_topic]))
    runtime = Runtime(config, app, Table(), Table(), send, Join(config), Merge(config), Handled())

    def message(offset: int, value: dict[str, Any]) -> Any:
        return SimpleNamespace(offset=offset, value=orjson.dumps(value))

    async def scenario() -> None:
        predictions = [message(i, {"request_id": f"r{i}", "model": "m", "timestamp": START + i,
                                   "prediction": "a" if i % 4 else "b"}) for i in range(20)]
        labels = [message(i, {"request_id": f"r{i}", "timestamp": START + i + 1, "label": "a"}) for i in range(20)]
        tick = START + 86400  # a day on: every window of the first pairs is final
        await runtime.join_inputs(TP(config.predictions_topic, 0), [*predictions, message(
            20, {"request_id": "tick", "model": "m", "timestamp": tick, "prediction": "a"})])
        await runtime.join_inputs(TP(config.labels_topic, 0), [*labels, message(
            20, {"request_id": "tick", "timestamp": tick, "label": "a"})])
        await runtime.flush()
        partials = [(v, p) for t, _, v, p in sent if t == config.partials_topic]
        for offset, (value, _) in enumerate(partials):
            await runtime.merge_one(SimpleNamespace(tp=TP(config.partials_topic, 0), offset=offset, partition=0),
                                    value)

    asyncio.run(scenario())
    records = [orjson.loads(v) for t, _, v, _ in sent if t == config.metrics_topic]
    finals = [r for r in records if r["final"] and r["window"]["start"] == START]
    assert [(r["window"]["name"], r["n"], r["metrics"]["accuracy"]) for r in finals] == [("tumbling_5m", 20, 0.75)]
    cumulative = [r for r in records if r["window"]["name"] == "cumulative"][-1]
    assert (cumulative["n"], cumulative["predictions"]) == (21, 21)
    [health] = [orjson.loads(v) for t, _, v, _ in sent if t == config.health_topic]
    assert health["pairs"] == 21 and health["balance"] == {"predictions": 0, "labels": 0}
    assert health["stalled_partitions"] == [] and health["late_partials"] == 0
