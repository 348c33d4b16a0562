"""Limits that bound the whole worker: floods of models, versions, segment keys and values beside
normal traffic, on a real broker. The normal figures stay exact; what is published stays within
what the settings imply, however many partitions see the flood."""

from __future__ import annotations

import time
import urllib.request
from collections import Counter
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from kafka_broker import Broker, free_port
from stream.config import Config
from stream.core.admission import OTHER, Limits
from stream.kafka.produce import Outgoing, produce, scenario_records
from stream.kafka.tail import read
from stream.simulate import Scenario
from worker_harness import START, Worker, assert_exact, expected_pairs, final_records, latest_health, setup, ticks

FLOOD = 5000
LIMITS = ("max_models: 5\nmax_versions_per_model: 3\nmax_segment_keys: 2\nmax_segment_values: 4\n"
          "series_ttl: 30d\n")  # the closing ticks jump 11 days ahead: nothing ages out


def pair(rid: str, ts: float, **prediction: Any) -> list[Outgoing]:
    return [(ts, 0, {"request_id": rid, "timestamp": ts, "prediction": "a", **prediction}),
            (ts, 1, {"request_id": rid, "timestamp": ts, "label": "a"})]


def floods(ts: float, refused_records_each: int) -> list[Outgoing]:
    """5,000 models (``refused_records_each`` pairs each), and 5,000 versions, segment keys and
    segment values of three models."""
    out: list[Outgoing] = []
    for i in range(FLOOD):
        for n in range(refused_records_each):
            out += pair(f"model-{i}-{n}", ts, model=f"flood-{i}")
        out += pair(f"version-{i}", ts, model="versions", model_version=f"v{i}")
        out += pair(f"key-{i}", ts, model="keys", segment={f"k{i}": "x"})
        out += pair(f"value-{i}", ts, model="values", segment={"k": f"x{i}"})
    return out


def published_models(config: Config) -> set[str]:
    return {r["model"] for _, r in read(config, config.metrics_topic, follow=False)}


def test_floods_of_names_stay_within_the_settings_bound_and_normal_figures_stay_exact(
        kafka: Broker, tmp_path: Path) -> None:
    port = free_port()
    config, path = setup(kafka, tmp_path, extra=f"metrics_port: {port}\n" + LIMITS)
    scenario = Scenario(pairs=6000, start_ts=START, rate_per_s=10.0, label_delay_mean_s=5.0, seed=23)
    normal = list(scenario_records(scenario))
    early = len(normal) // 5
    established = [*normal[:early], *pair("v-0", START, model="versions"), *pair("k-0", START, model="keys"),
                   *pair("x-0", START, model="values")]
    worker = Worker(path, tmp_path / "worker.log").start()
    try:
        produce(config, established)  # four models in service before the flood: admitted
        deadline = time.monotonic() + 120
        while published_models(config) < {"nba-game-outcome", "versions", "keys", "values"}:
            assert time.monotonic() < deadline, worker.tail()
            time.sleep(1)
        middle = normal[early][0]
        produce(config, [*normal[early:early + 1000], *floods(middle, refused_records_each=3), *normal[early + 1000:]])
        produce(config, ticks())
        expected = expected_pairs(scenario)
        assert_exact(final_records(config, set(expected), 240, worker, model="nba-game-outcome"), expected)
        started = time.monotonic()
        exposition = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        scrape_s = time.monotonic() - started
        time.sleep(2.5)  # one more health record after the last flush
        health = latest_health(config)
    finally:
        worker.stop()
    assert scrape_s < 5.0, scrape_s  # bounded series (below) are read in milliseconds; a loaded machine is slower
    series = {tuple(s.labels[k] for k in ("model", "model_version", "segment", "window"))
              for family in text_string_to_metric_families(exposition) for s in family.samples
              if s.name == "mlmon_model_window_pairs"}
    limits = Limits.of(Config.from_mapping({"max_models": 5, "max_versions_per_model": 3, "max_segment_keys": 2,
                                            "max_segment_values": 4}))
    assert len(series) <= limits.max_series() * len(config.windows), len(series)
    models = {m for m, _, _, _ in series}
    assert {"nba-game-outcome", "versions", "keys", "values"} <= models and len(models) <= 5
    versions = {v for m, v, _, _ in series if m == "versions"}
    assert len(versions) == 4 and OTHER in versions  # three of their own, the rest folded
    keys = Counter(seg.split("=")[0] for m, _, seg, w in series if m == "keys" and seg and w == "tumbling_5m")
    assert len(keys) == 3 and OTHER in keys  # two of their own (the first the merger met), the rest folded
    values = {seg for m, _, seg, w in series if m == "values" and seg and w == "tumbling_15m"}
    assert len(values) == 5 and f"k={OTHER}" in values
    # every record accounted for; refused models said so at most once an hour per model and place
    assert health["balance"] == {"predictions": 0, "labels": 0}, health
    dead = [d for _, d in read(config, config.dead_letters_topic, follow=False)]
    refused = {d["reason"].split("'")[1] for d in dead if "refused" in d["reason"]}
    assert len(refused) >= FLOOD - 1 and len(dead) < 3 * FLOOD  # 3 records each: fewer dead letters than that
    assert all(name.startswith("flood-") or name == "tick" for name in refused)  # (ticks still close windows)
    assert health["refused_models"] + health["refused_partials"] > 0


def test_a_burst_of_invalid_records_holds_no_metric_record_back(
        kafka: Broker, tmp_path: Path) -> None:
    """100,000 invalid records with the normal traffic spread among them: every pair's window keeps
    being published as the worker goes (dead letters are batched and cheaper than a pair)."""
    config, path = setup(kafka, tmp_path)
    scenario = Scenario(pairs=3000, start_ts=START, rate_per_s=10.0, label_delay_mean_s=5.0, seed=29)
    normal = list(scenario_records(scenario))
    worker = Worker(path, tmp_path / "worker.log").start()
    try:
        produce(config, normal[:200])  # the model is in service (admitted) before the burst
        deadline = time.monotonic() + 120
        while "nba-game-outcome" not in published_models(config):
            assert time.monotonic() < deadline, worker.tail()
            time.sleep(1)
        burst: list[Outgoing] = []
        for n, record in enumerate(normal[200:]):
            burst.append(record)
            burst += [(record[0], 0, {"request_id": f"bad-{n}-{i}", "model": "nba-game-outcome", "timestamp": "noon",
                                      "prediction": "home_win"}) for i in range(17)]
        sent_at = time.time()
        produce(config, burst)
        produce(config, ticks())
        expected = expected_pairs(scenario)
        assert_exact(final_records(config, set(expected), 240, worker, model="nba-game-outcome"), expected)
        time.sleep(2.5)
        health = latest_health(config)
    finally:
        worker.stop()
    assert health["invalid_predictions"] == 17 * (len(normal) - 200) and health["balance"] == {
        "predictions": 0, "labels": 0}
    emitted = sorted(datetime.fromisoformat(r["emitted_at"]).timestamp() for _, r in read(
        config, config.metrics_topic, follow=False) if r["model"] == "nba-game-outcome")
    during = [t for t in emitted if t >= sent_at]
    gaps = [b - a for a, b in pairwise(during)]
    # a flush is 250 ms; the bound leaves room for a busy machine (two CPU hogs: up to 2.9 s seen)
    assert len(during) > 20 and max(gaps) < 5.0, (len(during), max(gaps))
