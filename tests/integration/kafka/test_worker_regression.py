"""A regression model through `mlmon worker` on the real broker: its figures in every window kind
are replay's on the same input, bit for bit (exact sums), and scikit-learn's on the pairs each
window holds."""

from __future__ import annotations

import json
import random
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from sklearn import metrics as skm

from kafka_broker import Broker
from stream.config import Config
from stream.kafka.produce import Outgoing, produce
from stream.kafka.tail import read
from stream.replay import replay
from worker_harness import START, TTL_S, Worker, final_records, setup, ticks

MODEL = "price-eu"
WINDOWS = "windows: [tumbling 5m, cumulative, rolling 200]\nregression_models: [\"price-*\"]\n"


def records(pairs: int, seed: int) -> tuple[list[Outgoing], dict[int, list[tuple[float, float]]]]:
    """Predictions two a second, each labeled 1 to 20 s later (within the join TTL); values over
    several orders of magnitude. Returns the records in timestamp order and the (truth, guess)
    pairs of each 5-minute window."""
    rng = random.Random(seed)
    out: list[Outgoing] = []
    windows: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for i in range(pairs):
        ts = START + i / 2
        truth = rng.lognormvariate(3, 2)
        guess = truth * rng.uniform(0.7, 1.3) + rng.gauss(0, 5)
        segment = {"country": ("DE", "FR")[i % 2]}
        out.append((ts, 0, {"request_id": f"r-{i}", "model": MODEL, "model_version": "v1", "timestamp": ts,
                            "prediction": guess, "segment": segment}))
        label_ts = ts + rng.uniform(1, 20)
        out.append((label_ts, 1, {"request_id": f"r-{i}", "timestamp": label_ts, "label": truth}))
        windows[int(ts // 300) * 300].append((truth, guess))
    out.sort(key=lambda r: (r[0], r[1]))
    return out, windows


def keyed(record: dict[str, Any]) -> tuple[str, ...]:
    window = record["window"]
    return record["model"], json.dumps(record["segment"]), window["name"], str(window.get("start", 0))


def test_a_regression_model_in_the_worker_equals_replay_and_scikit_learn(kafka: Broker, tmp_path: Path) -> None:
    config, path = setup(kafka, tmp_path, extra=WINDOWS)
    sent, windows = records(3000, seed=5)
    produce(config, sent + list(ticks()))
    worker = Worker(path, tmp_path / "worker.log").start()
    try:
        finals = final_records(config, {("tumbling_5m", start) for start in windows}, timeout_s=180, worker=worker,
                               model=MODEL)
        time.sleep(3)  # the cumulative and rolling records that follow the last final ones
        latest = {keyed(r): r for _, r in read(config, config.metrics_topic, follow=False) if r["model"] == MODEL}
    finally:
        worker.stop()
    for start, pairs in windows.items():
        record = finals[("tumbling_5m", start)]
        truth, guess = [t for t, _ in pairs], [g for _, g in pairs]
        assert (record["task"], record["n"]) == ("regression", len(pairs))
        m = record["metrics"]
        assert m["mae"] == pytest.approx(skm.mean_absolute_error(truth, guess), rel=1e-9)
        assert m["rmse"] == pytest.approx(skm.mean_squared_error(truth, guess) ** 0.5, rel=1e-9)
        assert m["r2"] == pytest.approx(skm.r2_score(truth, guess), rel=1e-9, abs=1e-9)
        assert m["mean_error"] == pytest.approx(sum(g - t for t, g in pairs) / len(pairs), rel=1e-9, abs=1e-9)

    files = {kind: tmp_path / f"{kind}.jsonl" for kind in ("p", "l")}
    for kind, name in ((0, "p"), (1, "l")):
        files[name].write_text("".join(json.dumps(r) + "\n" for _, k, r in sent if k == kind))
    (tmp_path / "replay.yaml").write_text(f"join_ttl: {TTL_S}s\n{WINDOWS}")
    ran = replay(files["p"], files["l"], Config.load(tmp_path / "replay.yaml"), tmp_path / "m.jsonl")
    replayed = {keyed(r): r for r in map(json.loads, (tmp_path / "m.jsonl").read_text().splitlines())}
    assert ran.engine.health.pairs == len(sent) // 2
    assert set(latest) == set(replayed)
    assert {k[2] for k in replayed} == {"tumbling_5m", "cumulative", "rolling_200"}
    for key, record in replayed.items():
        ours = latest[key]
        assert (ours["n"], ours["predictions"]) == (record["n"], record["predictions"]), key
        assert set(ours["metrics"]) == set(record["metrics"]), key
        for name, value in record["metrics"].items():
            assert ours["metrics"][name] == value, (key, name)  # exact sums: the same figures, bit for bit
