"""The Reporter on a real broker: many threads, the worker's figures exact, every call accounted for;
and a broker outage that calls never wait for."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kafka_broker import Broker, JarBroker
from stream import Reporter
from stream.errors import InvalidRecord
from stream.kafka.produce import Outgoing, scenario_records
from stream.kafka.tail import read
from stream.simulate import Scenario
from worker_harness import START, Worker, assert_exact, expected_pairs, final_records, latest_health, setup, ticks


def report(reporter: Reporter, kind: int, record: dict[str, Any]) -> None:
    if kind == 0:
        reporter.prediction(record["request_id"], record["prediction"], scores=record.get("scores"),
                            segment=record.get("segment"), timestamp=record["timestamp"], model=record["model"],
                            model_version=record.get("model_version"))
    else:
        reporter.label(record["request_id"], record["label"], timestamp=record["timestamp"])


def from_threads(reporter: Reporter, records: Iterator[Outgoing], threads: int) -> int:
    """Send ``records`` from ``threads`` threads taking them in turn (so in about timestamp order),
    with an invalid prediction every 500 calls; return how many raised."""
    lock = threading.Lock()
    raised = [0] * threads
    errors: list[BaseException] = []

    def send(thread: int) -> None:
        try:
            sending(thread)
        except BaseException as exc:  # the test fails on it below
            errors.append(exc)

    def sending(thread: int) -> None:
        n = 0
        while True:
            with lock:
                item = next(records, None)
            if item is None:
                return
            report(reporter, item[1], item[2])
            n += 1
            if n % 500 == 0:
                try:
                    reporter.prediction(f"bad-{thread}-{n}", "1", model="fraud", scores={"1": 1.5})
                except InvalidRecord:
                    raised[thread] += 1

    workers = [threading.Thread(target=send, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if errors:
        raise errors[0]
    return sum(raised)


def test_eight_threads_report_100000_pairs_and_the_worker_s_figures_are_exact(kafka: Broker, tmp_path: Path) -> None:
    config, path = setup(kafka, tmp_path)
    scenario = Scenario(pairs=100_000, start_ts=START, rate_per_s=50.0, label_delay_mean_s=15.0, label_coverage=0.9,
                        early_label_rate=0.02, seed=19)
    worker = Worker(path, tmp_path / "worker.log").start()
    try:
        # The calls wait for room rather than drop: this test is about exact figures from many
        # threads, and a broker on a loaded machine may fall behind eight threads for a while
        # (dropping when the buffer is full is tested below).
        with Reporter.from_config(path, when_full="block", block_timeout_s=120.0) as reporter:
            records = iter([*scenario_records(scenario), *ticks()])
            total = 0

            def counted() -> Iterator[Outgoing]:
                nonlocal total
                for item in records:
                    total += 1
                    yield item

            raised = from_threads(reporter, counted(), threads=8)
            assert reporter.flush(180) == 0
            stats = reporter.stats()
        assert (stats.accepted, stats.delivered, stats.failed, stats.dropped, stats.waiting) == (total, total, 0, 0, 0)
        assert stats.invalid == raised > 0
        expected = expected_pairs(scenario)
        assert_exact(final_records(config, set(expected), timeout_s=240, worker=worker), expected)
        time.sleep(2.5)  # one more health record after the last flush
        health = latest_health(config)
        assert health["balance"] == {"predictions": 0, "labels": 0}, health
        assert health["invalid_predictions"] == health["invalid_labels"] == 0  # nothing invalid reached a topic
        assert health["repartitioned"] == {"predictions": 0, "labels": 0}  # keyed as the worker reads them
    finally:
        worker.stop()


def test_with_the_broker_stopped_calls_return_at_once_and_the_buffered_records_arrive_once(tmp_path: Path) -> None:
    broker = JarBroker()  # its own broker: the shared one must stay up for the other tests
    try:
        config, path = setup(broker.start(), tmp_path)
        reporter = Reporter.from_config(path, model="fraud", buffer_records=2000)
        for i in range(500):
            reporter.prediction(f"before-{i}", "1")
        assert reporter.flush(30) == 0
        broker.stop()
        accepted, took = [], []
        for i in range(5000):
            dropped = reporter.stats().dropped
            started = time.perf_counter()
            reporter.prediction(f"during-{i}", "1")
            took.append(time.perf_counter() - started)
            if reporter.stats().dropped == dropped:
                accepted.append(f"during-{i}")
        took.sort()
        p99 = took[int(len(took) * 0.99)]  # a call that waited for the broker would take seconds
        assert p99 < 0.05, f"p99 of prediction() with the broker down: {p99 * 1e3:.2f} ms"
        stats = reporter.stats()
        assert len(accepted) == 2000 and stats.dropped == 3000 and stats.waiting == 2000, stats
        broker.start()
        assert reporter.flush(120) == 0
        stats = reporter.close()
        assert (stats.accepted, stats.delivered, stats.failed, stats.dropped) == (2500, 2500, 0, 3000)
        seen = [key.decode() for key, _ in read(config, config.predictions_topic) if key is not None]
        assert sorted(seen) == sorted([f"before-{i}" for i in range(500)] + accepted)  # each exactly once
    finally:
        broker.remove()
