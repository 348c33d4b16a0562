"""`mlmon produce`, topic administration and `mlmon metrics/alerts tail` on the real broker,
checked with kcat (a Kafka client we did not write)."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import uuid
from collections import defaultdict
from pathlib import Path

import orjson
import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from kafka_broker import Broker
from stream.cli import main
from stream.config import Config
from stream.errors import TopologyError
from stream.kafka.admin import describe_config, ensure_topics
from stream.kafka.produce import file_records, produce, producer
from stream.kafka.tail import format_alert, tail


def fresh_config(kafka: Broker, partitions: int = 4) -> Config:
    suffix = uuid.uuid4().hex[:8]
    config = Config(broker=kafka.bootstrap, partitions=partitions)
    for field in ("predictions_topic", "labels_topic", "metrics_topic", "alerts_topic", "dead_letters_topic",
                  "health_topic", "partials_topic", "repartition_topic"):
        setattr(config, field, f"{getattr(config, field)}-{suffix}")
    return config


def kcat(kafka: Broker, topic: str) -> list[tuple[str, int, str]]:
    """(key, partition, value) of every record, read by kcat."""
    if shutil.which("kcat") is None:
        pytest.skip("kcat is not installed (scripts/ensure-system-deps installs it)")
    out = subprocess.run(
        ["kcat", "-b", kafka.bootstrap, "-C", "-t", topic, "-e", "-q", "-f", "%k\t%p\t%s\n"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    return [(k, int(p), v) for k, p, v in (line.split("\t", 2) for line in out.splitlines())]


def test_topics_are_created_with_their_partitions_and_metrics_are_compacted(kafka: Broker) -> None:
    config = fresh_config(kafka, partitions=3)
    existing = ensure_topics(config)
    assert existing[config.predictions_topic] == existing[config.labels_topic] == 3
    assert describe_config(config, config.metrics_topic)["cleanup.policy"] == "compact"
    assert ensure_topics(config) == existing  # a second start changes nothing


def test_internal_topics_of_another_partition_count_are_a_clear_error(kafka: Broker) -> None:
    config = fresh_config(kafka, partitions=2)
    ensure_topics(config)
    config.partitions = 4  # the same internal topics, another worker configuration
    with pytest.raises(TopologyError, match=f"topic '{config.partials_topic}' has 2 partitions"):
        ensure_topics(config)


def test_input_topics_may_have_other_partition_counts_than_the_worker(kafka: Broker) -> None:
    config = fresh_config(kafka)
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
    futures = admin.create_topics([NewTopic(config.predictions_topic, 4, 1), NewTopic(config.labels_topic, 2, 1)])
    for future in futures.values():
        future.result(30)
    existing = ensure_topics(config)  # labels are all forwarded to the partition of their request
    assert (existing[config.predictions_topic], existing[config.labels_topic]) == (4, 2)
    assert existing[config.repartition_topic] == config.partitions


def test_simulated_traffic_is_keyed_and_co_partitioned(
    kafka: Broker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = fresh_config(kafka)
    code = main(["produce", "--broker", kafka.bootstrap, "--pairs", "2000", "--coverage", "0.9",
                 "--duplicates", "0.05", "--config", str(_write_config(config, tmp_path / "config.yaml"))])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["failed"] == 0
    predictions = kcat(kafka, config.predictions_topic)
    labels = kcat(kafka, config.labels_topic)
    assert len(predictions) == report["predictions"] and len(labels) == report["labels"]
    assert 2000 < len(predictions) < 2200 and 1700 < len(labels) < 2000
    partition_of: dict[str, set[int]] = defaultdict(set)
    for key, partition, value in predictions + labels:
        assert json.loads(value)["request_id"] == key
        partition_of[key].add(partition)
    assert all(len(parts) == 1 for parts in partition_of.values()), "a request id landed in two partitions"
    assert len({p for parts in partition_of.values() for p in parts}) == 4


def test_jsonl_files_are_sent_as_they_are(kafka: Broker, tmp_path: Path) -> None:
    config = fresh_config(kafka, partitions=1)
    ensure_topics(config)
    preds = tmp_path / "p.jsonl"
    preds.write_text('{"request_id": "a", "model": "m", "timestamp": 1, "prediction": "x"}\n{oops\n')
    labels = tmp_path / "l.jsonl"
    labels.write_text('{"request_id": "a", "timestamp": 2, "label": "x"}\n')
    report = produce(config, file_records(preds, labels))
    assert (report.predictions, report.labels, report.failed) == (2, 1, 0)
    assert sorted(v for _, _, v in kcat(kafka, config.predictions_topic))[1] == "{oops"


def test_tail_prints_metric_records_and_alerts(kafka: Broker) -> None:
    config = fresh_config(kafka, partitions=1)
    ensure_topics(config)
    record = {"model": "m", "model_version": "v1", "segment": {}, "n": 10, "final": True,
              "window": {"kind": "tumbling", "name": "tumbling_1h", "start": 0, "end": 3600},
              "metrics": {"accuracy": 0.9, "f1_macro": 0.85}, "label_coverage": 0.5}
    alert = {"alertname": "ModelAccuracyLow", "status": "firing", "value": 0.6, "n": 300,
             "labels": {"model": "m", "model_version": "v1", "window": "rolling_500"},
             "annotations": {"summary": "accuracy fell"}, "starts_at": "2026-01-01T00:00:00Z"}
    client = producer(config)
    client.produce(config.metrics_topic, key=b"k", value=orjson.dumps(record))
    client.produce(config.alerts_topic, key=b"f", value=orjson.dumps(alert))
    assert client.flush(30) == 0
    out = io.StringIO()
    assert tail(config, config.metrics_topic, as_json=False, follow=False, out=out) == 1
    assert out.getvalue().startswith("final m v1 [all] tumbling_1h 1970-01-01T00:00:00Z n=10  accuracy 0.9000")
    out = io.StringIO()
    tail(config, config.alerts_topic, as_json=True, follow=False, out=out)
    assert json.loads(out.getvalue()) == alert
    assert format_alert(alert).startswith("FIRING   ModelAccuracyLow m v1 rolling_500 value=0.6 n=300")


def _write_config(config: Config, path: Path) -> Path:
    topics = ("predictions_topic", "labels_topic", "metrics_topic", "alerts_topic", "dead_letters_topic",
              "health_topic", "partials_topic", "repartition_topic")
    path.write_text("".join(f"{t}: {getattr(config, t)}\n" for t in topics) + f"partitions: {config.partitions}\n")
    return path
