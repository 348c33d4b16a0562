"""Detector rules on the real broker: the worker raises the alerts replay raises on the same records
(labels sent without a key, so most reach another partition than their request's), and through
SIGKILLs and restarts neither repeats nor forgets one."""

from __future__ import annotations

import json
import random
import signal
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from kafka_broker import Broker
from stream.config import Config
from stream.kafka.produce import Outgoing, produce, scenario_records
from stream.kafka.tail import read
from stream.replay import Collected, run
from stream.simulate import Scenario
from worker_harness import START, Worker, expected_pairs, final_records, processing, setup, ticks

RULES = """
rules:
  - name: AccuracyDrop
    metric: accuracy
    detector: cusum
    drop: 0.05
    baseline_pairs: 1000
    segments: ["*"]
"""


def scenario(seed: int) -> Scenario:
    """A fall from 0.9 to 0.75 and back, on the model overall and both segment values."""
    return Scenario(pairs=14_000, start_ts=START, rate_per_s=20.0, label_delay_mean_s=15.0, accuracy=0.9,
                    degraded_accuracy=0.75, degrade_from=0.45, recover_at=0.7, duplicate_rate=0.05,
                    early_label_rate=0.02, seed=seed)


def records(s: Scenario) -> list[Outgoing]:
    return [*scenario_records(s), *ticks()]


def replayed(config: Config, outgoing: list[Outgoing]) -> list[dict[str, Any]]:
    predictions = [record for _, kind, record in outgoing if kind == 0]
    labels = [record for _, kind, record in outgoing if kind == 1]
    _, sink, _, _ = run(predictions, labels, config, Collected)
    assert isinstance(sink, Collected)
    return sink.alerts


def by_detector(alerts: list[dict[str, Any]]) -> dict[str, list[tuple[Any, ...]]]:
    """Each detector's events in order, without their wall-clock times."""
    out: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    for a in alerts:
        out[a["fingerprint"]].append((a["status"], a["value"], json.dumps(a["detector"], sort_keys=True)))
    return dict(out)


def worker_alerts(config: Config, path: Path, rules: Path, tmp_path: Path, s: Scenario, outgoing: list[Outgoing],
                  kills: int) -> list[dict[str, Any]]:
    worker = Worker(path, tmp_path / "worker.log", rules).start()
    sender = threading.Thread(target=produce, args=(config, outgoing),
                              kwargs={"rate_per_s": 400.0 if kills else 0.0, "partitioner": "random"})
    sender.start()
    rng = random.Random(3)
    try:
        for kill in range(kills):
            processing(worker, starts=kill + 1, timeout_s=90)
            time.sleep(rng.uniform(0.5, 4.0))
            worker.stop(signal.SIGKILL)
            worker.start()
        sender.join()
        final_records(config, set(expected_pairs(s)), timeout_s=300, worker=worker)
        time.sleep(2.0)  # the heartbeat after the last pairs
        return [value for _, value in read(config, config.alerts_topic, follow=False)]
    finally:
        sender.join()
        worker.stop()


@pytest.mark.parametrize(("seed", "kills"), [(12, 0), (13, 3)])
def test_worker_raises_what_replay_raises_through_kills(kafka: Broker, tmp_path: Path, seed: int, kills: int) -> None:
    """Each detector fires once and resolves once, as in replay; killed three times while the
    traffic flows, the worker neither repeats nor forgets an alert."""
    config, path = setup(kafka, tmp_path)
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    config = Config.load(path, rules)
    s = scenario(seed)
    outgoing = records(s)
    expected = by_detector(replayed(config, outgoing))
    assert len(expected) == 3 and all([e[0] for e in v] == ["firing", "resolved"] for v in expected.values())
    assert by_detector(worker_alerts(config, path, rules, tmp_path, s, outgoing, kills)) == expected
