"""SASL on a real broker: kafka_options reach every client (admin, producer, consumer, faust), and
the password never reaches a log."""

from __future__ import annotations

from pathlib import Path

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient  # type: ignore[attr-defined]

from kafka_broker import JarBroker, free_port
from stream.kafka.produce import produce, scenario_records
from stream.simulate import Scenario
from worker_harness import START, Worker, assert_exact, expected_pairs, final_records, setup, ticks

PASSWORD = "pw-9f2c-never-logged"


def sasl_properties(port: int, controller_port: int) -> str:
    jaas = ('org.apache.kafka.common.security.plain.PlainLoginModule required username="admin" '
            f'password="admin-pw" user_admin="admin-pw" user_mlmon="{PASSWORD}";')
    return "\n".join([
        f"listeners=SASL_PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        f"advertised.listeners=SASL_PLAINTEXT://127.0.0.1:{port}",
        "listener.security.protocol.map=SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name=SASL_PLAINTEXT",
        "sasl.enabled.mechanisms=PLAIN",
        "sasl.mechanism.inter.broker.protocol=PLAIN",
        f"listener.name.sasl_plaintext.plain.sasl.jaas.config={jaas}",
        "",
    ])


def test_the_worker_runs_on_a_sasl_broker_and_logs_no_secret(tmp_path: Path) -> None:
    ports = (free_port(), free_port())
    broker = JarBroker(extra_properties=sasl_properties(*ports), ports=ports)
    try:
        options = ("kafka_options:\n  security.protocol: SASL_PLAINTEXT\n  sasl.mechanism: PLAIN\n"
                   f"  sasl.username: mlmon\n  sasl.password: {PASSWORD}\n")
        config, path = setup(broker.start(), tmp_path, extra=options)  # the admin client creates the topics
        scenario = Scenario(pairs=2_000, start_ts=START, rate_per_s=10.0, label_delay_mean_s=5.0, seed=3)
        produce(config, list(scenario_records(scenario)) + list(ticks()))
        worker = Worker(path, tmp_path / "worker.log").start()
        try:
            expected = expected_pairs(scenario)
            assert_exact(final_records(config, set(expected), timeout_s=180, worker=worker), expected)
        finally:
            worker.stop()
        assert PASSWORD not in worker.log.read_text()
        with pytest.raises(KafkaException):  # the listener does refuse clients without credentials
            AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(timeout=3)
    finally:
        broker.remove()
