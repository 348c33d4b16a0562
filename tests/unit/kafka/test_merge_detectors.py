"""Detector rules split as the worker splits them, without a broker: join partitions' engines
collect pairs (and retract revised ones), the merge agent judges them at the watermark every
partition has passed. The alerts must be replay's, whatever the partitioning, the interleaving of
partitions, arrival within the lateness bound, and merger restarts from its table."""

from __future__ import annotations

import json
import random
import zlib
from typing import Any

import orjson
import pytest

from stream.config import Config
from stream.core.engine import Engine
from stream.core.records import Label, Prediction, parse_label, parse_prediction
from stream.kafka.merge_agent import Merge

PARTITIONS = 3
LAG_S = 30


def config() -> Config:
    rules = [{"name": "Drop", "metric": "accuracy", "detector": "cusum", "drop": 0.05, "baseline_pairs": 500,
              "segments": ["*"]},
             {"name": "RecallDrop", "metric": "recall.1", "detector": "cusum", "drop": 0.1, "baseline_pairs": 300,
              "models": ["b"]}]
    return Config.from_mapping({"windows": ["tumbling 1h"], "join_ttl": "10m", "watermark_lag": f"{LAG_S}s",
                                "partitions": PARTITIONS, "rules": rules})


def history(seed: int, pairs: int = 24_000) -> list[Prediction | Label]:
    """Two binary models, two segment values; model team/a's accuracy falls from 0.9 to 0.78 and comes
    back; a tenth of the requests have a second label of the other value, a few seconds apart
    either way, and a tenth a second prediction, earlier, of the other class and segment value (so
    which one counts depends on timestamps alone, and a pair may move to another series)."""
    rng = random.Random(seed)
    out: list[Prediction | Label] = []
    for i in range(pairs):
        ts = 1.7e9 + 2.0 * i
        model = ("team/a", "b")[i % 2]  # a "/" in a name must not confuse the merger's table keys
        accuracy = 0.78 if model == "team/a" and pairs // 3 <= i < 2 * pairs // 3 else 0.9
        truth = rng.random() < 0.5
        guess = truth if rng.random() < accuracy else not truth
        rid = f"r{i}"
        out.append(parse_prediction({"request_id": rid, "model": model, "timestamp": ts, "prediction": str(int(guess)),
                                     "segment": {"k": "xy"[i % 3 % 2]}}))
        again = rng.random() < 0.1  # the same model's prediction again, earlier, in the other segment: it counts
        label_ts = ts + (rng.uniform(1, 3) if again else rng.uniform(1, 100))
        out.append(parse_label({"request_id": rid, "timestamp": label_ts, "label": str(int(truth))}))
        if again:
            out.append(parse_prediction({"request_id": rid, "model": model, "timestamp": ts - rng.uniform(1, 9),
                                         "prediction": str(int(not guess)), "segment": {"k": "yx"[i % 3 % 2]}}))
        if rng.random() < 0.1:
            out.append(parse_label({"request_id": rid, "timestamp": label_ts + rng.choice([-1, 1]) * rng.uniform(1, 9),
                                    "label": str(int(not truth))}))
    return out


def replayed(records: list[Prediction | Label]) -> list[dict[str, Any]]:
    engine = Engine(config(), revisions=False)
    engine.receive_many(sorted(records, key=lambda r: (r.timestamp, type(r) is Label)))
    engine.finish()
    return engine.alert_events


def split(records: list[Prediction | Label], rng: random.Random) -> list[list[Prediction | Label]]:
    """Each partition's records (by request id), in time order but for arrival up to 20 s late."""
    parts: list[list[tuple[float, Prediction | Label]]] = [[] for _ in range(PARTITIONS)]
    for record in records:
        arrival = record.timestamp + rng.uniform(0, 20)
        parts[zlib.crc32(record.request_id.encode()) % PARTITIONS].append((arrival, record))
    return [[record for _, record in sorted(part, key=lambda x: x[0])] for part in parts]


def worker_alerts(records: list[Prediction | Label], seed: int, restarts: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    settings = config()
    parts = split(records, rng)
    engines = [Engine(settings, emit_partials=True, revisions=False) for _ in range(PARTITIONS)]
    table: dict[str, Any] = {}
    merge = Merge(settings)
    alerts: list[dict[str, Any]] = []
    offset = 0
    positions = [0] * PARTITIONS
    restart_at = sorted(rng.sample(range(1, 200), restarts))

    def send(partition: int) -> None:
        nonlocal offset
        for model, message in engines[partition].detectors.take():
            body = orjson.dumps({"partition": partition, "model": model, "pairs": message})
            assert merge.handle(table, 0, offset, body) == []
            offset += 1

    def beat() -> None:
        nonlocal offset
        marks = {p: engines[p].watermark + LAG_S if positions[p] < len(parts[p]) else 1e12 for p in range(PARTITIONS)}
        body = orjson.dumps({"watermarks": {str(p): m if m > -1e300 else None for p, m in marks.items()}})
        out = merge.handle(table, 0, offset, body)
        offset += 1
        alerts.extend(orjson.loads(value) for topic, _, value in out if topic == settings.alerts_topic)

    step = 0
    while any(positions[p] < len(parts[p]) for p in range(PARTITIONS)):
        p = rng.randrange(PARTITIONS)
        chunk = parts[p][positions[p]:positions[p] + rng.randint(1, 60)]
        if not chunk:
            continue
        positions[p] += len(chunk)
        engines[p].take_many(chunk)
        engines[p].observe(max(r.timestamp for r in chunk) - 20)  # the partition's event time, as the worker's
        engines[p].metric_records.clear()
        send(p)
        beat()
        step += 1
        if restart_at and step == restart_at[0]:  # the merger dies: a new one from its table alone
            restart_at.pop(0)
            merge = Merge(settings)
            merge.rebuild(table)
    for p in range(PARTITIONS):
        engines[p].finish()
        send(p)
    beat()
    return alerts


def comparable(alerts: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(a["fingerprint"], a["status"], a["value"], json.dumps(a["detector"], sort_keys=True)) for a in alerts]


@pytest.mark.slow
@pytest.mark.parametrize(("seed", "restarts"), [(1, 0), (2, 0), (3, 4), (4, 9)])
def test_the_merger_raises_replays_alerts(seed: int, restarts: int) -> None:
    records = history(seed)
    expected = comparable(replayed(records))
    assert any(a[1] == "firing" for a in expected)
    found = comparable(worker_alerts(records, seed, restarts))
    assert sorted(found) == sorted(expected)
    for fingerprint in {a[0] for a in expected}:  # and in order, per detector
        assert [a for a in found if a[0] == fingerprint] == [a for a in expected if a[0] == fingerprint]
