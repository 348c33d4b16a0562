"""Faults on a real broker: worker kills, a broker outage, members joining and leaving.

Each test sends a simulated classifier's traffic (duplicates, early and missing labels; in the
first two, most records on another partition than their request's) while the fault happens, then
requires every final window to equal scikit-learn on the ground truth (so nothing was lost and
nothing counted twice) and the worker's health counters to balance. The kills hit a worker whose
join keeps most of its pending state on disk (``join_memory_mb`` of about 200 entries) and that
saves its partitions' engines every 2 s (each restart loads the latest saves).
"""

from __future__ import annotations

import random
import re
import signal
import threading
import time
from pathlib import Path

from kafka_broker import Broker, JarBroker
from stream.config import Config
from stream.kafka.produce import produce, scenario_records
from stream.simulate import Scenario
from worker_harness import (
    START,
    Worker,
    assert_exact,
    cpu_hogs,
    expected_pairs,
    final_records,
    latest_health,
    processing,
    rebuilt_by,
    second_member,
    setup,
    ticks,
)


def load(seed: int, pairs: int = 12_000) -> Scenario:
    return Scenario(pairs=pairs, start_ts=START, rate_per_s=50.0, label_delay_mean_s=15.0, label_coverage=0.9,
                    duplicate_rate=0.05, early_label_rate=0.02, seed=seed)


def sending(config: Config, scenario: Scenario, rate_per_s: float, partitioner: str = "murmur2_random"
            ) -> threading.Thread:
    """Send the scenario, then far-future ticks that close every window, at a steady rate, keyed by
    request id with librdkafka's ``partitioner`` (any other than murmur2 puts most records on another
    partition than their request's: the worker forwards them)."""
    records = list(scenario_records(scenario)) + list(ticks())
    sender = threading.Thread(target=produce, args=(config, records),
                              kwargs={"rate_per_s": rate_per_s, "partitioner": partitioner})
    sender.start()
    return sender


def assert_counted_exactly(config: Config, scenario: Scenario, sender: threading.Thread, worker: Worker,
                           balanced: bool = True) -> None:
    """Once the traffic is out: every final window equals scikit-learn, the health counters balance."""
    sender.join()
    expected = expected_pairs(scenario)
    assert_exact(final_records(config, set(expected), timeout_s=300, worker=worker), expected)
    if balanced:
        assert_balanced(config, worker)


def assert_balanced(config: Config, worker: Worker) -> dict[str, object]:
    time.sleep(2.5)  # one more health record after the last flush
    health = latest_health(config)
    assert health["balance"] == {"predictions": 0, "labels": 0}, (health, worker.tail())
    return health


def test_ten_kills_under_load_on_busy_cores_lose_nothing_and_count_nothing_twice(kafka: Broker, tmp_path: Path) -> None:
    # most pending state on disk; each partition's engine saved every 2 s (the kills hit saves too)
    config, path = setup(kafka, tmp_path, extra="join_memory_mb: 0.02\ncheckpoint_interval: 2s\n")
    scenario = load(seed=31, pairs=16_000)
    worker = Worker(path, tmp_path / "worker.log").start()
    sender = sending(config, scenario, rate_per_s=150.0, partitioner="consistent_random")  # about 110 s
    rng = random.Random(7)
    try:
        with cpu_hogs(2):  # both cores busy with another process: startups and rebalances come late
            for kill in range(10):
                processing(worker, starts=kill + 1, timeout_s=90)
                time.sleep(rng.uniform(0.2, 4.0))  # anywhere: mid-batch, mid-commit, mid-flush
                worker.stop(signal.SIGKILL)
                worker.start()
            assert_counted_exactly(config, scenario, sender, worker)
    finally:
        sender.join()
        worker.stop()
    assert len(rebuilt_by(worker)) >= 10  # every kill hit a worker that was processing
    assert re.search(r"in \d+ partitions \([1-9]\d* from a saved engine\)", worker.log.read_text())
    on_disk = [int(n) for n in re.findall(r"predictions \((\d+) on disk\)", worker.log.read_text())]
    assert max(on_disk, default=0) > 0  # the rebuilt joins kept their state on disk


def test_a_worker_joining_and_leaving_mid_stream_changes_nothing(kafka: Broker, tmp_path: Path) -> None:
    config, path = setup(kafka, tmp_path)
    scenario = load(seed=37)
    second_path = second_member(path, tmp_path)
    first = Worker(path, tmp_path / "worker1.log").start()
    second = Worker(second_path, tmp_path / "worker2.log")
    sender = sending(config, scenario, rate_per_s=300.0, partitioner="random")  # about 80 s of traffic
    rng = random.Random(11)
    try:
        processing(first, starts=1)
        for _ in range(5):  # each start and stop moves partitions mid-stream, both ways
            second.start()
            time.sleep(rng.uniform(3.0, 8.0))
            second.stop(signal.SIGTERM)
            time.sleep(rng.uniform(3.0, 8.0))
        second.start()  # and once more, to be left running
        assert_counted_exactly(config, scenario, sender, first, balanced=False)
    finally:
        sender.join()
        first.stop()
        second.stop()
    assert "Traceback" not in first.log.read_text() + second.log.read_text()


def test_a_broker_outage_of_twenty_seconds_under_load_loses_nothing(tmp_path: Path) -> None:
    broker = JarBroker()  # its own broker: the shared one must stay up for the other tests
    try:
        config, path = setup(broker.start(), tmp_path)
        scenario = load(seed=41)
        worker = Worker(path, tmp_path / "worker.log").start()
        sender = sending(config, scenario, rate_per_s=300.0)
        try:
            time.sleep(12)
            broker.stop()
            time.sleep(20)  # the producer and the worker retry on their own meanwhile
            broker.start()
            assert_counted_exactly(config, scenario, sender, worker)
        finally:
            sender.join()
            worker.stop()
    finally:
        broker.remove()
