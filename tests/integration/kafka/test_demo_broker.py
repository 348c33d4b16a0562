"""`mlmon demo --broker`: the same demo over Kafka shows an alert firing and resolving, exits 0, and
writes its report from the worker's topics (as `mlmon report --broker` reads them)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from browser import render

from kafka_broker import Broker, free_port


def test_demo_over_kafka_fires_and_resolves(kafka: Broker, tmp_path: Path) -> None:
    report = tmp_path / "broker-demo.html"
    run = subprocess.run(
        [sys.executable, "-m", "stream.cli", "demo", "--broker", kafka.bootstrap, "--duration", "30",
         "--metrics-port", str(free_port()), "--report-out", str(report)],
        capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    assert any(line.startswith("FIRING") and "ModelAccuracyLow" in line for line in lines), run.stdout
    assert any(line.startswith("RESOLVED") for line in lines), run.stdout
    assert f"report written to {report}" in run.stdout
    shown = render(report, "broker-demo-report.png")
    assert shown.errors == [] and shown.charts == 3 and shown.shapes >= 4
    assert shown.count('<table id="health">') == 1 and "ModelAccuracyLow" in shown.dom
