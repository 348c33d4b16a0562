"""Smoke tests on the real broker: a confluent-kafka round trip, and a faust table that survives a restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from kafka_broker import Broker

APP = Path(__file__).with_name("faust_counter_app.py")


def create_topics(bootstrap: str, *names: str, partitions: int = 1) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(n, num_partitions=partitions, replication_factor=1) for n in names])
    for future in futures.values():
        future.result(timeout=30)


def consume(bootstrap: str, topic: str, expected: int, timeout_s: float = 60.0) -> list[tuple[str, str]]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"smoke-{uuid.uuid4()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    out: list[tuple[str, str]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < expected and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            out.append(((msg.key() or b"").decode(), (msg.value() or b"").decode()))
    finally:
        consumer.close()
    return out


def produce(bootstrap: str, topic: str, items: list[tuple[str, str]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    for key, value in items:
        producer.produce(topic, key=key.encode(), value=value.encode())
    assert producer.flush(30) == 0


def test_confluent_round_trip(kafka: Broker) -> None:
    topic = f"smoke-{uuid.uuid4().hex[:8]}"
    create_topics(kafka.bootstrap, topic, partitions=3)
    items = [(f"k{i}", f"v{i}") for i in range(100)]
    produce(kafka.bootstrap, topic, items)
    assert sorted(consume(kafka.bootstrap, topic, 100)) == sorted(items)


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, str(APP), "worker", "-l", "info"], env=env,
                                stdout=out, stderr=subprocess.STDOUT, cwd=APP.parent)


def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_faust_table_is_recovered_after_restart(kafka: Broker, tmp_path: Path) -> None:
    suffix = uuid.uuid4().hex[:8]
    in_topic, out_topic = f"words-{suffix}", f"counts-{suffix}"
    create_topics(kafka.bootstrap, in_topic, out_topic)
    env = {**os.environ, "SMOKE_APP_ID": f"smoke-{suffix}", "SMOKE_BOOTSTRAP": kafka.bootstrap,
           "SMOKE_DATA_DIR": str(tmp_path / "data"), "SMOKE_IN_TOPIC": in_topic, "SMOKE_OUT_TOPIC": out_topic}
    log = tmp_path / "worker.log"
    worker = start_worker(env, log)
    try:
        produce(kafka.bootstrap, in_topic, [("w", "apple")] * 5 + [("w", "pear")] * 3)
        first = consume(kafka.bootstrap, out_topic, 8, timeout_s=90)
        assert len(first) == 8, log.read_text()[-3000:]
    finally:
        stop_worker(worker)
    # The second run starts from the same data dir; its table must carry on from 5 and 3.
    worker = start_worker(env, log)
    try:
        produce(kafka.bootstrap, in_topic, [("w", "apple"), ("w", "pear")])
        everything = consume(kafka.bootstrap, out_topic, 10, timeout_s=90)
        assert len(everything) == 10, log.read_text()[-3000:]
    finally:
        stop_worker(worker)
    assert everything[-2:] == [("apple", "6"), ("pear", "4")], log.read_text()[-3000:]
    assert "Traceback" not in log.read_text()
