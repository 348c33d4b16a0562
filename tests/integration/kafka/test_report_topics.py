"""`mlmon report --broker`: the page from what the worker's topics hold (metric records, alert
events, health records summed over the latest of each worker process), bad records named."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from kafka_broker import Broker
from stream.cli import main
from stream.core.keys import record_key
from stream.kafka.produce import producer
from stream.report import read_topics
from worker_harness import setup


def record(start: int, accuracy: float) -> dict:
    return {"model": "fraud", "model_version": "v2", "segment": {}, "task": "classification",
            "window": {"kind": "tumbling", "name": "tumbling_5m", "size_s": 300, "start": start, "end": start + 300},
            "n": 100, "predictions": 110, "label_coverage": 0.9, "classes": ["0", "1"],
            "confusion_matrix": [[50, 10], [10, 30]], "metrics": {"accuracy": accuracy}, "final": True,
            "emitted_at": "2026-01-01T00:00:00Z"}


def test_the_report_of_the_worker_s_topics(kafka: Broker, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config, path = setup(kafka, tmp_path)
    out = producer(config)
    for i in range(6):
        value = record(1_767_225_600 + 300 * i, 0.9 - 0.05 * i)  # compacted topics: keyed, as the worker keys them
        out.produce(config.metrics_topic, orjson.dumps(value), key=record_key(value).encode(), partition=0)
    out.produce(config.metrics_topic, b"not json", key=b"bad", partition=0)
    out.produce(config.alerts_topic, orjson.dumps({
        "alertname": "AccuracyLow", "status": "firing", "labels": {"model": "fraud", "model_version": "v2"},
        "starts_at": "2026-01-01T00:20:00Z", "fingerprint": "0123456789abcdef",
        "annotations": {"summary": "s", "description": "d"}}), partition=0)
    for pid, pairs in ((1, 10), (1, 300), (2, 200)):  # the latest of each process counts
        out.produce(config.health_topic, orjson.dumps({"pid": pid, "pairs": pairs, "expired_predictions": 1}),
                    key=str(pid).encode(), partition=0)
    assert out.flush(30) == 0

    inputs = read_topics(config)
    assert len(inputs.metrics) == 6 and len(inputs.alerts) == 1 and inputs.health is not None
    assert (inputs.health["pairs"], inputs.health["expired_predictions"]) == (500, 2)
    assert inputs.problems == [f"topic {config.metrics_topic}, record 7: not a metric record of this mlmon version "
                               "(no 'model')"]

    report = tmp_path / "r.html"
    assert main(["report", "--broker", kafka.bootstrap, "--config", str(path), "--out", str(report)]) == 0
    captured = capsys.readouterr()
    assert "6 metric records, 1 alert events" in captured.out and "record 7" in captured.err
    page = report.read_text()
    assert "fraud" in page and "AccuracyLow (firing)" in page and 'id="health"' in page
