"""`mlmon demo --broker`: the same demo over Kafka shows an alert firing and resolving, and exits 0."""

from __future__ import annotations

import subprocess
import sys

from kafka_broker import Broker, free_port


def test_demo_over_kafka_fires_and_resolves(kafka: Broker) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "stream.cli", "demo", "--broker", kafka.bootstrap, "--duration", "30",
         "--metrics-port", str(free_port())],
        capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    assert any(line.startswith("FIRING") and "ModelAccuracyLow" in line for line in lines), run.stdout
    assert any(line.startswith("RESOLVED") for line in lines), run.stdout
