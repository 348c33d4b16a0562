"""The batch table: batches are stored compressed, and batches stored before (plain JSON) still load."""

from __future__ import annotations

import math
import zlib
from datetime import UTC, datetime
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.config import Config
from stream.core.records import Label, Prediction, parse_label, parse_prediction
from stream.kafka.batches import stored_in_order
from stream.kafka.formats import BATCH_KEY, ZSTD_MAGIC, batch_json, batch_value
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


def in_order_reference(values: list[bytes]) -> tuple[list[float], list[Prediction | Label]]:
    """Every stored record decoded at once (JSON objects, then records), sorted by (timestamp,
    kind), stored order among equals: the simple way ``stored_in_order`` must equal."""
    rows: list[tuple[float, int, Prediction | Label]] = []
    latest = []
    for value in values:
        batch = orjson.loads(batch_json(value))
        last = -math.inf
        for kind, slot, parse in ((0, "p", parse_prediction), (1, "l", parse_label)):
            for obj in batch[slot]:
                record = parse(obj)
                rows.append((record.timestamp, kind, record))
                last = max(last, record.timestamp)
        latest.append(last)
    rows.sort(key=lambda r: (r[0], r[1]))
    return latest, [record for _, _, record in rows]


stamp = st.one_of(st.integers(0, 40).map(lambda s: START + s), st.integers(0, 40).map(lambda s: int(START) + s),
                  st.sampled_from([START + 0.25, START + 1e-6]),
                  st.integers(0, 40).map(lambda s: datetime.fromtimestamp(START + s, UTC).isoformat()),
                  st.just("2026-01-01T00:00:07.5+01:00"))
stored_record = st.one_of(
    st.builds(lambda rid, ts, value, scored, segment: {
        "request_id": f"r{rid}", "model": "m", "timestamp": ts, "prediction": value,
        **({"scores": {"a": 0.5, "b": 0.5}} if scored else {}), **({"segment": {"k": segment}} if segment else {})},
        st.integers(0, 9), stamp, st.sampled_from(["a", "b", 1, 2.5, True]), st.booleans(),
        st.sampled_from(["", "x"])),
    st.builds(lambda rid, ts, value: {"request_id": f"r{rid}", "timestamp": ts, "label": value},
              st.integers(0, 9), stamp, st.sampled_from(["a", "b", 0, 1.5, False])))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(stored_record, max_size=12), max_size=6), st.integers(1, 7),
       st.sampled_from(["zstd", "zlib", "plain"]))
def test_stored_records_come_in_order_a_chunk_at_a_time_as_decoding_them_all_gives(
        batches: list[list[dict[str, Any]]], chunk: int, form: str) -> None:
    values = []
    for batch in batches:
        value = batch_value([orjson.dumps(r) for r in batch if "prediction" in r],
                            [orjson.dumps(r) for r in batch if "label" in r])
        plain = batch_json(value)
        values.append({"zstd": value, "zlib": zlib.compress(plain, 1), "plain": plain}[form])
    latest, chunks = stored_in_order(values, chunk)
    taken = list(chunks)
    assert all(0 < len(part) <= chunk for part in taken)
    assert (latest, [record for part in taken for record in part]) == in_order_reference(values)
