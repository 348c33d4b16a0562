"""What the worker tests share: a config on fresh topics, a worker process, and the contract
computed the obvious way (expected pairs per window), compared with scikit-learn."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sklearn import metrics as skm

from kafka_broker import Broker
from stream.config import Config
from stream.kafka.admin import ensure_topics
from stream.kafka.produce import Outgoing, closing_ticks
from stream.kafka.tail import read
from stream.simulate import Scenario, draws

TTL_S = 60
TOPICS = ("predictions", "labels", "metrics", "alerts", "health", "partials", "repartition")
START = 1_767_225_600.0
TICK_TS = START + 1_000_000  # far-future records on every input partition push the watermark past all windows


def setup(kafka: Broker, tmp_path: Path, extra: str = "") -> tuple[Config, Path]:
    suffix = uuid.uuid4().hex[:8]
    text = (
        f"join_ttl: {TTL_S}s\nwindows: [tumbling 5m, tumbling 15m]\npartitions: 4\n"
        f"app_id: mlmon-test-{suffix}\ndata_dir: {tmp_path / 'data'}\n"
        + "".join(f"{t}_topic: {t}-{suffix}\n" for t in TOPICS)
        + f"dead_letters_topic: dead-{suffix}\nbroker: {kafka.bootstrap}\n"
        + ("" if "metrics_port" in extra else "metrics_port: 0\n") + extra
    )
    path = tmp_path / "config.yaml"
    path.write_text(text)
    config = Config.load(path)
    ensure_topics(config)
    return config, path


def ticks() -> Iterator[Outgoing]:
    return closing_ticks(40, TICK_TS)


class Worker:
    def __init__(self, config_path: Path, log: Path, rules: Path | None = None) -> None:
        self.args = [sys.executable, "-m", "stream.cli", "worker", "--config", str(config_path)]
        if rules:
            self.args += ["--rules", str(rules)]
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT, env=os.environ.copy())
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def stacks(self) -> str:
        """The log's end after the worker wrote where it is: its asyncio tasks (SIGUSR1) and every
        thread (SIGQUIT), for a test that gives up waiting on it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGUSR1)
            time.sleep(1.0)
            self.proc.send_signal(signal.SIGQUIT)
            time.sleep(1.0)
        return self.tail(60_000)


def rebuilt_by(worker: Worker) -> set[str]:
    """Worker processes (pids) that got partitions and rebuilt their state from them."""
    return {line.split("] [")[1] for line in worker.log.read_text().splitlines() if "engines rebuilt from" in line}


def processing(worker: Worker, starts: int, timeout_s: float = 60.0) -> None:
    """Until the worker's ``starts``-th process owns partitions and has rebuilt its state from them."""
    deadline = time.monotonic() + timeout_s
    while len(rebuilt_by(worker)) < starts:
        assert time.monotonic() < deadline, worker.tail()
        time.sleep(0.1)


@contextmanager
def cpu_hogs(n: int) -> Iterator[None]:
    """``n`` processes that keep a core busy each, for as long as the block runs."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def expected_pairs(scenario: Scenario) -> dict[tuple[str, int], list[tuple[str, str]]]:
    """The contract computed the obvious way, per (window name, start)."""
    out: dict[tuple[str, int], list[tuple[str, str]]] = defaultdict(list)
    for d in draws(scenario):
        if d.label is None or d.label["timestamp"] - d.prediction["timestamp"] > TTL_S:
            continue
        for size, name in ((300, "tumbling_5m"), (900, "tumbling_15m")):
            out[(name, int(d.prediction["timestamp"] // size) * size)].append(
                (d.label["label"], d.prediction["prediction"]))
    return out


def final_records(config: Config, wanted: set[tuple[str, int]], timeout_s: float, worker: Worker,
                  model: str | None = None) -> dict[Any, Any]:
    """The final record of each wanted (window name, start), overall (no segment), of ``model``
    (by default any but the closing ticks')."""
    finals: dict[tuple[str, int], dict[str, Any]] = {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not wanted <= set(finals):
        for _, record in read(config, config.metrics_topic, follow=False):
            if record["final"] and record["model"] == (model or record["model"]) != "tick" and not record["segment"]:
                finals[(record["window"]["name"], record["window"]["start"])] = record
        assert worker.proc is None or worker.proc.poll() is None, worker.tail()
    assert wanted <= set(finals), f"missing final windows {wanted - set(finals)}\n{worker.stacks()}"
    return finals


def assert_exact(finals: dict[Any, Any], expected: dict[tuple[str, int], list[tuple[str, str]]]) -> None:
    for key, pairs in expected.items():
        record = finals[key]
        y_true, y_pred = [t for t, _ in pairs], [p for _, p in pairs]
        assert record["n"] == len(pairs), (key, record["n"], len(pairs))
        m = record["metrics"]
        assert m["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred), abs=1e-9)
        assert m["f1_macro"] == pytest.approx(skm.f1_score(y_true, y_pred, average="macro", zero_division=0), abs=1e-9)
        assert m["precision_weighted"] == pytest.approx(
            skm.precision_score(y_true, y_pred, average="weighted", zero_division=0), abs=1e-9)
        assert m["mcc"] == pytest.approx(skm.matthews_corrcoef(y_true, y_pred), abs=1e-9)


def exact_with_dead_letters(config: Config, path: Path, scenario: Scenario, log: Path) -> list[dict[str, Any]]:
    """Start a worker on what was sent, require every final window of ``scenario`` to equal
    scikit-learn, and return the dead letters it published."""
    worker = Worker(path, log).start()
    try:
        expected = expected_pairs(scenario)
        assert_exact(final_records(config, set(expected), timeout_s=180, worker=worker), expected)
        return [value for _, value in read(config, config.dead_letters_topic, follow=False)]
    finally:
        worker.stop()


def latest_health(config: Config) -> dict[str, Any]:
    health = [value for _, value in read(config, config.health_topic, follow=False)]
    assert health, "the worker published no health record"
    return health[-1]


def second_member(path: Path, tmp_path: Path) -> Path:
    """A config for another worker of the same group and topics, with its own state folder."""
    (tmp_path / "w2").mkdir()
    second_path = tmp_path / "w2" / "config.yaml"
    second_path.write_text(path.read_text().replace(str(tmp_path / "data"), str(tmp_path / "w2" / "data")))
    return second_path


def uncommitted_inputs(config: Config, timeout_s: float = 10.0) -> dict[tuple[str, int], int]:
    """Records of each input partition past the group's committed offset, once commits settle
    (empty: the worker committed everything it consumed)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": config.broker, "group.id": config.app_id, "enable.auto.commit": False})
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            tps = [TopicPartition(t, p) for t in (config.predictions_topic, config.labels_topic)
                   for p in range(config.partitions)]
            behind = {}
            for tp in consumer.committed(tps, timeout=10):
                high = consumer.get_watermark_offsets(tp, timeout=10)[1]
                if high > max(tp.offset, 0):
                    behind[(tp.topic, tp.partition)] = high - max(tp.offset, 0)
            if not behind or time.monotonic() > deadline:
                return behind
            time.sleep(0.5)
    finally:
        consumer.close()
