"""The batch table: batches are stored compressed, and batches stored before (plain JSON) still load."""

from __future__ import annotations

import zlib
from typing import Any

import orjson

from stream.config import Config
from stream.kafka.batches import BATCH_KEY, ZSTD_MAGIC, batch_json
from stream.kafka.join_agent import Join

START = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def saved_table(config: Config, pairs: int, pending: int) -> dict[str, Any]:
    """A join's table after ``pairs`` labelled requests and ``pending`` unlabelled ones."""
    join = Join(config)
    join.stale = False
    offset = 0
    for i in range(pairs + pending):
        rid = f"request-{i}"
        join.handle(config.predictions_topic, 0, offset, orjson.dumps(
            {"request_id": rid, "model": "m", "timestamp": START + i, "prediction": "a" if i % 3 else "b",
             "scores": {"a": 0.75, "b": 0.25}}))
        offset += 1
        if i < pairs:
            join.handle(config.labels_topic, 0, offset, orjson.dumps(
                {"request_id": rid, "timestamp": START + i + 5, "label": "a"}))
            offset += 1
    table: dict[str, Any] = {}
    join.save(table, 0)
    return table


def state_after_rebuild(config: Config, table: dict[str, Any]) -> tuple[Any, ...]:
    join = Join(config)
    join.rebuild(table)
    join.engines[0].flush()
    partials = sorted(v for t, _, v in join.outputs() if t == config.partials_topic)
    total, pending, _ = join.totals()
    return pending, total.pairs, partials


def test_batches_are_stored_compressed_and_zlib_or_plain_json_batches_still_load() -> None:
    config = Config.from_mapping({"partitions": 1, "windows": ["tumbling 5m"], "join_ttl_s": 600})
    table = saved_table(config, pairs=200, pending=50)
    [key] = [k for k in table if k.startswith(BATCH_KEY)]
    stored = table[key]
    assert stored[:4] == ZSTD_MAGIC
    plain = batch_json(stored)
    assert plain.startswith(b"{") and len(stored) * 3 < len(plain)
    assert len(orjson.loads(plain)["p"]) == 250

    rebuilt = state_after_rebuild(config, table)
    assert rebuilt[:2] == ((50, 0), 200)
    for before in (plain, zlib.compress(plain, 1)):  # as workers before stored them
        assert state_after_rebuild(config, {**table, key: before}) == rebuilt
