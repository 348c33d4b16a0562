"""`mlmon worker` on the real broker: exact final metrics, health accounting, restarts, dead letters, alerts."""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kafka_broker import Broker, free_port
from stream.config import Config
from stream.kafka.produce import produce, producer, scenario_records
from stream.kafka.routing import partition_of
from stream.kafka.tail import read
from stream.replay import replay
from stream.simulate import Scenario, draws
from worker_harness import (
    START,
    TTL_S,
    Worker,
    assert_exact,
    exact_with_dead_letters,
    expected_pairs,
    final_records,
    latest_health,
    processing,
    second_member,
    setup,
    ticks,
    uncommitted_inputs,
)


def test_fifty_thousand_pairs_are_exact_and_accounted_for(kafka: Broker, tmp_path: Path) -> None:
    metrics_port = free_port()
    config, path = setup(kafka, tmp_path, extra=f"metrics_port: {metrics_port}\n")
    scenario = Scenario(pairs=50_000, start_ts=START, rate_per_s=100.0, label_delay_mean_s=20.0,
                        label_coverage=0.9, duplicate_rate=0.05, early_label_rate=0.02)
    sent = produce(config, scenario_records(scenario))
    sent_ticks = produce(config, ticks())
    worker = Worker(path, tmp_path / "worker.log").start()
    try:
        expected = expected_pairs(scenario)
        finals = final_records(config, set(expected), timeout_s=240, worker=worker)
        assert_exact(finals, expected)
        assert uncommitted_inputs(config) == {}  # offsets follow the saved batches to the end
        time.sleep(2)  # one more health record after the last flush
        health = latest_health(config)
        exposition = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    finally:
        worker.stop()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(exposition) for s in family.samples}
    assert samples[("mlmon_pairs_total", ())] == health["pairs"]
    lags = [v for (name, _), v in samples.items() if name == "mlmon_consumer_lag_records"]
    assert len(lags) == 8 and max(lags) == 0  # both inputs x 4 partitions, all consumed
    newest = max(start for name, start in finals if name == "tumbling_5m")
    gauge = ("mlmon_model_accuracy_ratio", (("model", "nba-game-outcome"), ("model_version", "v1"),
                                            ("segment", ""), ("window", "tumbling_5m")))
    assert samples[gauge] == pytest.approx(finals[("tumbling_5m", newest)]["metrics"]["accuracy"], abs=1e-12)
    assert health["predictions"] == sent.predictions + sent_ticks.predictions
    assert health["labels"] == sent.labels + sent_ticks.labels
    assert health["balance"] == {"predictions": 0, "labels": 0}
    assert health["repartitioned"] == {"predictions": 0, "labels": 0}  # keyed right: nothing forwarded
    assert samples[("mlmon_repartitioned_records_total", (("topic", config.labels_topic),))] == 0
    dup_preds = sum(d.duplicate_prediction for d in draws(scenario))
    dup_labels = sum(d.duplicate_label and d.label is not None for d in draws(scenario))
    assert (health["duplicate_predictions"], health["duplicate_labels"]) == (dup_preds, dup_labels)
    assert health["pairs"] == sum(len(p) for k, p in expected.items() if k[0] == "tumbling_15m") + 40
    assert health["late_labels"] > 0 and health["expired_predictions"] > 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_stopped_worker_resumes_without_losing_or_double_counting(kafka: Broker, tmp_path: Path, sig: int) -> None:
    config, path = setup(kafka, tmp_path)
    scenario = Scenario(pairs=20_000, start_ts=START, rate_per_s=50.0, label_delay_mean_s=15.0,
                        label_coverage=0.9, duplicate_rate=0.05, early_label_rate=0.02, seed=11)
    records = list(scenario_records(scenario)) + list(ticks())
    worker = Worker(path, tmp_path / "worker.log").start()
    sender = threading.Thread(target=produce, args=(config, records), kwargs={"rate_per_s": 2000.0})
    sender.start()
    try:
        processing(worker, starts=1)  # a busy machine can take many seconds to start a worker
        time.sleep(3)  # mid-stream
        worker.stop(sig)
        worker.start()
        sender.join()
        expected = expected_pairs(scenario)
        assert_exact(final_records(config, set(expected), timeout_s=240, worker=worker), expected)
    finally:
        sender.join()
        worker.stop()
    assert worker.log.read_text().count("engines rebuilt from") >= 2  # once per start


def test_bad_input_is_dead_lettered_with_a_reason_and_the_worker_goes_on(kafka: Broker, tmp_path: Path) -> None:
    config, path = setup(kafka, tmp_path)

    def prediction(**fields: Any) -> bytes:
        return orjson.dumps({"request_id": "r", "model": "m", "timestamp": START, "prediction": "a", **fields})

    bad = [
        (b"{not json", "not valid JSON"),
        (orjson.dumps({"model": "m", "timestamp": START, "prediction": "a"}), "missing field 'request_id'"),
        (prediction(timestamp="noon"), "RFC 3339"),
        (prediction(model=["m"]), "must be a string"),
        (b'{"request_id": "big", "model": "' + b"m" * 70_000 + b'"}', "over the limit"),
        (prediction(timestamp="9999-12-31T23:59:59-23:59"), "outside 2000 to 9999"),
        (prediction(timestamp="2026-11-30 06:00:00Z"), "not an RFC 3339 date-time"),
        (prediction(timestamp="2026-W48-1T06:00:00+00:00"), "not an RFC 3339 date-time"),
        (prediction(timestamp=946_684_799), "from 2000 to 9999"),
        (prediction(timestamp=1_767_225_600_000), "milliseconds?"),
        (prediction(model="a\x00b"), "control characters"),
        (prediction(model="   "), "only spaces"),
        (b'{"request_id": "r", "model": "m", "timestamp": 1767225600, "prediction": 123456789012345678901234567890}',
         "beyond 2^53"),
        (bytes(range(1, 32)) * 132, "not valid JSON"),  # 4 KiB of control bytes
    ]
    client = producer(config)
    for value, _ in bad:
        client.produce(config.predictions_topic, key=b"r", value=value)
    client.produce(config.labels_topic, key=b"r", value=b'{"request_id": "r", "timestamp": 1767225600}')
    half = {"request_id": "half", "model": "nba-game-outcome", "model_version": "v1", "timestamp": START,
            "prediction": "home_win"}  # in the normal traffic's series: its label is refused, its pair not counted
    client.produce(config.predictions_topic, key=b"half", value=orjson.dumps(half))
    client.produce(config.labels_topic, key=b"half", value=orjson.dumps(
        {"request_id": "half", "timestamp": START + 1, "label": 0.5}))  # not a class
    assert client.flush(30) == 0
    scenario = Scenario(pairs=600, start_ts=START, rate_per_s=10.0, label_delay_mean_s=5.0)
    produce(config, scenario_records(scenario))
    produce(config, ticks())
    dead = exact_with_dead_letters(config, path, scenario, tmp_path / "worker.log")
    reasons = sorted(d["reason"] for d in dead)
    assert len(dead) == len(bad) + 2, reasons
    for _, why in bad:
        assert any(why in reason for reason in reasons), (why, reasons)
    assert any("missing field 'label'" in reason for reason in reasons)
    assert all({"topic", "partition", "offset", "raw"} <= set(d) for d in dead)
    assert all(len(orjson.dumps(d)) < 6 * 1024 for d in dead)  # bounded, whatever came in
    [pairing] = [d for d in dead if d.get("request_id") == "half"]  # refused where it met its prediction
    assert pairing["model"] == "nba-game-outcome" and pairing["topic"] == config.labels_topic
    assert "0.5" in pairing["reason"] and pairing["offset"] >= 0


RULES = """
rules:
  - name: ModelAccuracyLow
    metric: accuracy
    window: tumbling_5m
    below: 0.75
    clear: 0.8
    min_samples: 200
"""


def test_a_degradation_fires_once_and_recovery_resolves_once(kafka: Broker, tmp_path: Path) -> None:
    config, path = setup(kafka, tmp_path)
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    scenario = Scenario(pairs=12_000, start_ts=START, rate_per_s=10.0, label_delay_mean_s=10.0,
                        degrade_from=0.35, recover_at=0.65, accuracy=0.92, degraded_accuracy=0.5, seed=5)
    produce(config, scenario_records(scenario))
    produce(config, ticks())
    worker = Worker(path, tmp_path / "worker.log", rules).start()
    try:
        expected = expected_pairs(scenario)
        final_records(config, set(expected), timeout_s=240, worker=worker)
        alerts = [value for _, value in read(config, config.alerts_topic, follow=False)]
    finally:
        worker.stop()
    assert [a["status"] for a in alerts] == ["firing", "resolved"], json.dumps(alerts, indent=1)
    assert alerts[0]["fingerprint"] == alerts[1]["fingerprint"]
    assert alerts[0]["labels"]["model"] == "nba-game-outcome"


def test_two_workers_in_one_group_give_the_same_final_metrics_as_one(kafka: Broker, tmp_path: Path) -> None:
    config, path = setup(kafka, tmp_path)
    scenario = Scenario(pairs=20_000, start_ts=START, rate_per_s=50.0, label_delay_mean_s=15.0,
                        label_coverage=0.9, duplicate_rate=0.05, early_label_rate=0.02, seed=23)
    second_path = second_member(path, tmp_path)
    first = Worker(path, tmp_path / "worker1.log").start()
    second = Worker(second_path, tmp_path / "worker2.log").start()
    try:
        time.sleep(8)  # both members join before the traffic starts
        produce(config, list(scenario_records(scenario)) + list(ticks()), rate_per_s=4000.0)
        expected = expected_pairs(scenario)
        assert_exact(final_records(config, set(expected), timeout_s=240, worker=first), expected)
    finally:
        first.stop()
        second.stop()
    by_worker: dict[int, set[int]] = {}
    for _, health in read(config, config.health_topic):
        if health["partitions"]:
            by_worker[health["pid"]] = set(health["partitions"])
    assert len(by_worker) == 2, by_worker  # both workers owned input partitions at the end
    assert "Traceback" not in first.log.read_text() + second.log.read_text()


def test_inputs_written_in_transactions_are_counted_and_committed_to_the_end(kafka: Broker, tmp_path: Path) -> None:
    """Transaction markers take offsets that no consumer is given: the worker must neither wait
    for them (it handles offsets strictly in order) nor stop committing at them."""
    config, path = setup(kafka, tmp_path)
    scenario = Scenario(pairs=3_000, start_ts=START, rate_per_s=50.0, label_delay_mean_s=10.0,
                        label_coverage=0.9, duplicate_rate=0.0, early_label_rate=0.0, seed=5)
    client = producer(config, **{"transactional.id": f"mlmon-test-{tmp_path.name}", "delivery.timeout.ms": 60_000})
    client.init_transactions(30)
    topics = (config.predictions_topic, config.labels_topic)
    records = list(scenario_records(scenario)) + list(ticks())
    for first in range(0, len(records), 250):  # a marker every 250 records
        client.begin_transaction()
        for _, kind, record in records[first:first + 250]:
            client.produce(topics[kind], key=str(record["request_id"]).encode(), value=orjson.dumps(record))
        client.commit_transaction(30)
    worker = Worker(path, tmp_path / "worker.log").start()
    try:
        expected = expected_pairs(scenario)
        assert_exact(final_records(config, set(expected), timeout_s=180, worker=worker), expected)
        behind = uncommitted_inputs(config, timeout_s=20)
    finally:
        worker.stop()
    # Committed up to the last transaction's marker, which no consumer is given: it is passed once
    # a record follows it (each partition had 9 or more markers before, all passed).
    assert set(behind.values()) <= {1}, behind


def test_inputs_compressed_with_every_codec_kafka_has_are_exact(kafka: Broker, tmp_path: Path) -> None:
    """Producers choose their compression: the worker reads gzip, snappy, lz4 and zstd batches."""
    config, path = setup(kafka, tmp_path)
    scenario = Scenario(pairs=4000, start_ts=START, rate_per_s=10.0, label_delay_mean_s=5.0, seed=13)
    records = list(scenario_records(scenario))
    quarter = len(records) // 4 + 1
    for n, codec in enumerate(("gzip", "snappy", "lz4", "zstd")):
        produce(config, records[n * quarter:(n + 1) * quarter], compression_type=codec)
    produce(config, ticks(), compression_type="lz4")
    assert exact_with_dead_letters(config, path, scenario, tmp_path / "worker.log") == []


def test_a_prediction_and_label_stamped_far_ahead_are_dead_lettered_and_every_window_stays_exact(
        kafka: Broker, tmp_path: Path) -> None:
    config, path = setup(kafka, tmp_path)
    scenario = Scenario(pairs=2000, start_ts=START, rate_per_s=10.0, label_delay_mean_s=5.0, seed=5)
    records = list(scenario_records(scenario))
    future = time.time() + 30 * 86400  # a broken clock: a month ahead of the worker's
    broken = [(future, 0, {"request_id": "broken-clock", "model": "nba-game-outcome", "timestamp": future,
                           "prediction": "home_win"}),
              (future, 1, {"request_id": "broken-clock", "timestamp": future, "label": "home_win"})]
    middle = len(records) // 2
    produce(config, records[:middle] + broken + records[middle:])
    produce(config, ticks())
    dead = exact_with_dead_letters(config, path, scenario, tmp_path / "worker.log")
    assert sorted((d["source"], d["request_id"]) for d in dead) == [("labels", "broken-clock"),
                                                                    ("predictions", "broken-clock")]
    assert all("ahead of the worker's clock" in d["reason"] and d["topic"] and d["offset"] >= 0 for d in dead)


def test_series_whose_names_share_separators_stay_apart(kafka: Broker, tmp_path: Path) -> None:
    config, path = setup(kafka, tmp_path)
    scenario = Scenario(pairs=1000, start_ts=START, rate_per_s=10.0, label_delay_mean_s=5.0, seed=17)
    records = list(scenario_records(scenario))
    for model, version, pairs in (("hc|x", "y", 40), ("hc", "x|y", 20)):
        for i in range(pairs):
            rid, ts = f"{model}/{version}/{i}", START + i
            records.append((ts, 0, {"request_id": rid, "model": model, "model_version": version, "timestamp": ts,
                                    "prediction": "a", "segment": {"k,=": "v=,"}}))
            records.append((ts, 1, {"request_id": rid, "timestamp": ts, "label": "a"}))
    produce(config, sorted(records, key=lambda r: (r[0], r[1])))
    produce(config, ticks())
    worker = Worker(path, tmp_path / "worker.log").start()
    try:
        expected = expected_pairs(scenario)  # the normal traffic beside them stays exact
        assert_exact(final_records(config, set(expected), 180, worker, model=scenario.models[0]), expected)
        deadline, finals = time.monotonic() + 120, {}
        while time.monotonic() < deadline and len(finals) < 4:
            for _, r in read(config, config.metrics_topic, follow=False):
                if r["final"] and r["model"] in ("hc|x", "hc") and r["window"]["name"] == "tumbling_5m":
                    finals[(r["model"], r["model_version"], tuple(r["segment"].items()))] = r["n"]
    finally:
        worker.stop()
    assert finals == {("hc|x", "y", ()): 40, ("hc|x", "y", (("k,=", "v=,"),)): 40,
                      ("hc", "x|y", ()): 20, ("hc", "x|y", (("k,=", "v=,"),)): 20}


@pytest.mark.parametrize("labels_from", ["no key", "librdkafka's default partitioner", "a topic of 6 partitions"])
def test_labels_from_any_producer_are_forwarded_to_their_predictions_and_every_window_is_exact(
        kafka: Broker, tmp_path: Path, labels_from: str) -> None:
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewPartitions  # type: ignore[attr-defined]

    config, path = setup(kafka, tmp_path)
    if labels_from == "a topic of 6 partitions":
        admin = AdminClient({"bootstrap.servers": config.broker})
        admin.create_partitions([NewPartitions(config.labels_topic, 6)])[config.labels_topic].result(timeout=30)
    scenario = Scenario(pairs=4000, start_ts=START, rate_per_s=10.0, label_delay_mean_s=20.0, label_coverage=0.9,
                        duplicate_rate=0.05, seed=9)
    records = list(scenario_records(scenario)) + list(ticks())
    produce(config, [r for r in records if r[1] == 0])  # keyed by request_id, murmur2: on their partitions
    labels = Producer({"bootstrap.servers": config.broker, "linger.ms": 5})  # confluent-kafka's defaults
    for _, kind, record in records:
        if kind == 1:
            key = None if labels_from == "no key" else record["request_id"].encode()
            if labels_from == "a topic of 6 partitions":
                labels.produce(config.labels_topic, key=key, value=orjson.dumps(record),
                               partition=partition_of(record["request_id"], 6))  # murmur2, as Java's producer
            else:
                labels.produce(config.labels_topic, key=key, value=orjson.dumps(record))
        labels.poll(0)
    assert labels.flush(30) == 0
    worker = Worker(path, tmp_path / "worker.log").start()
    try:
        expected = expected_pairs(scenario)
        assert_exact(final_records(config, set(expected), timeout_s=180, worker=worker), expected)
        time.sleep(2)  # one more health record after the last flush
        health = latest_health(config)
    finally:
        worker.stop()
    sent_labels = sum(1 for r in records if r[1] == 1)
    assert health["labels"] == sent_labels and health["balance"] == {"predictions": 0, "labels": 0}
    share = health["repartitioned"]["labels"] / sent_labels
    assert (share == 1.0) if labels_from == "a topic of 6 partitions" else (0.5 < share < 0.9)  # most go elsewhere
    assert health["repartitioned"]["predictions"] == 0


def cells(record: dict[str, Any]) -> dict[tuple[str, str], int]:
    """A record's confusion matrix as (actual, predicted) -> count, whatever the class order."""
    classes = record.get("classes", [])
    return {(a, p): record["confusion_matrix"][i][j] for i, a in enumerate(classes) for j, p in enumerate(classes)
            if record["confusion_matrix"][i][j]}


CUSTOM_METRICS = """custom_metrics:
  - {name: home_cost, expression: "500 * fn['home_win'] + 5 * fp['home_win']"}
  - {name: youden_j, function: "worker_metrics:youden"}
positive_classes: {"*": away_win}
"""


def test_every_window_kind_in_the_worker_equals_replay_on_the_same_input(
        kafka: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every figure, with ranking and calibration from scores and custom metrics by expression and
    by function, in every window kind."""
    (tmp_path / "worker_metrics.py").write_text(
        "def youden(matrix, classes):\n"
        "    if len(classes) < 2:\n"
        "        return float('nan')\n"
        "    recall = [matrix[i, i] / matrix[i].sum() if matrix[i].sum() else 0.0 for i in range(len(classes))]\n"
        "    return sum(recall) - 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # the worker's process imports it too
    windows = "windows: [tumbling 5m, tumbling 15m, cumulative, rolling 300]\n" + CUSTOM_METRICS
    config, path = setup(kafka, tmp_path, extra=windows)
    scenario = Scenario(pairs=6000, start_ts=START, rate_per_s=5.0, label_delay_mean_s=30.0, label_coverage=0.9,
                        duplicate_rate=0.05, early_label_rate=0.02, seed=13)
    records = list(scenario_records(scenario)) + list(ticks())
    produce(config, records)
    worker = Worker(path, tmp_path / "worker.log").start()
    try:
        expected = expected_pairs(scenario)
        final_records(config, set(expected), timeout_s=180, worker=worker)
        time.sleep(3)  # the cumulative records that follow the last final ones
        latest: dict[tuple[str, ...], dict[str, Any]] = {}
        for _, r in read(config, config.metrics_topic, follow=False):
            latest[(r["model"], r["model_version"], json.dumps(r["segment"]), r["window"]["name"],
                    str(r["window"].get("start", 0)))] = r
    finally:
        worker.stop()
    files = {kind: tmp_path / f"{kind}.jsonl" for kind in ("p", "l")}
    for kind, name in ((0, "p"), (1, "l")):
        files[name].write_text("".join(json.dumps(r) + "\n" for _, k, r in records if k == kind))
    (tmp_path / "replay.yaml").write_text(f"join_ttl: {TTL_S}s\n{windows}")
    ran = replay(files["p"], files["l"], Config.load(tmp_path / "replay.yaml"), tmp_path / "m.jsonl")
    replayed = {}
    for line in (tmp_path / "m.jsonl").read_text().splitlines():
        r = json.loads(line)
        replayed[(r["model"], r["model_version"], json.dumps(r["segment"]), r["window"]["name"],
                  str(r["window"].get("start", 0)))] = r
    assert ran.engine.balance() == {"predictions": 0, "labels": 0}
    assert set(latest) == set(replayed)
    for name in ("cumulative", "rolling_300"):  # the model and its two venues, and the ticks
        assert sum(1 for k in latest if k[3] == name) == 4
    for key, record in replayed.items():
        ours = latest[key]
        assert (ours["n"], ours["predictions"], cells(ours)) == (record["n"], record["predictions"], cells(record)), key
        assert set(ours["metrics"]) == set(record["metrics"]), key
        if record["n"] and key[0] == "nba-game-outcome":
            assert {"roc_auc", "average_precision", "ece", "home_cost", "youden_j"} <= set(record["metrics"]), key
        for name, value in record["metrics"].items():
            if name == "calibration":
                for mine, theirs in zip(ours["metrics"][name], value, strict=True):
                    assert mine["count"] == theirs["count"], key
                    for field in ("mean_score", "fraction_positive"):
                        assert mine[field] == pytest.approx(theirs[field], abs=1e-9), (key, field)
                continue
            assert ours["metrics"][name] == pytest.approx(value, abs=1e-9, nan_ok=True), (key, name)


def test_a_partition_with_no_traffic_does_not_hold_windows_open(kafka: Broker, tmp_path: Path) -> None:
    config, path = setup(kafka, tmp_path, extra="idle_timeout: 5s\n")
    scenario = Scenario(pairs=3000, start_ts=START, rate_per_s=10.0, label_delay_mean_s=5.0, seed=21)
    quiet = 3  # nothing is sent to input partition 3, not even the ticks
    sent = [r for r in list(scenario_records(scenario)) + list(ticks())
            if partition_of(r[2]["request_id"], config.partitions) != quiet]
    produce(config, sent)
    kept = {r[2]["request_id"] for r in sent}
    expected: dict[tuple[str, int], list[tuple[str, str]]] = {}
    for d in draws(scenario):
        if d.prediction["request_id"] in kept and d.label is not None \
                and d.label["timestamp"] - d.prediction["timestamp"] <= TTL_S:
            for size, name in ((300, "tumbling_5m"), (900, "tumbling_15m")):
                expected.setdefault((name, int(d.prediction["timestamp"] // size) * size), []).append(
                    (d.label["label"], d.prediction["prediction"]))
    worker = Worker(path, tmp_path / "worker.log").start()
    try:
        processing(worker, starts=1)
        started = time.monotonic()
        assert_exact(final_records(config, set(expected), timeout_s=120, worker=worker), expected)
        took = time.monotonic() - started
    finally:
        worker.stop()
    assert took < 5 + 20  # idle_timeout plus the flushes, on a busy machine


def test_a_champion_and_a_challenger_scoring_the_same_requests_each_get_exact_figures(
        kafka: Broker, tmp_path: Path) -> None:
    """The challenger scores each request a second after the champion, some after the label."""
    config, path = setup(kafka, tmp_path)
    scenario = Scenario(pairs=3000, start_ts=START, rate_per_s=10.0, label_delay_mean_s=20.0, label_coverage=0.9,
                        early_label_rate=0.1, seed=23)
    records: list[Any] = []
    expected: dict[tuple[str, str, int], list[tuple[str, str]]] = defaultdict(list)
    joined = 40  # the ticks
    for i, d in enumerate(draws(scenario)):
        challenger = {**d.prediction, "model": "challenger", "timestamp": d.prediction["timestamp"] + 1,
                      "prediction": "home_win" if i % 3 else d.prediction["prediction"]}
        for p in (d.prediction, challenger):
            records.append((p["timestamp"], 0, p))
            if d.label is not None and d.label["timestamp"] - p["timestamp"] <= TTL_S:
                start = int(p["timestamp"] // 300) * 300
                expected[(p["model"], "tumbling_5m", start)].append((d.label["label"], p["prediction"]))
        if d.label is not None:
            records.append((d.label["timestamp"], 1, d.label))
            joined += d.label["timestamp"] - challenger["timestamp"] <= TTL_S  # one of the two at least
    records.sort(key=lambda r: (r[0], r[1]))
    # Both models score requests on every partition first (an hour before, never labelled): a model
    # an engine has not met yet misses the requests whose label paired before it (see README, Join).
    meet = [(START - 3600, 0, {"request_id": f"meet-{i}", "model": model, "timestamp": START - 3600,
                               "prediction": "home_win"}) for i in range(40) for model in ("nba-game-outcome",
                                                                                          "challenger")]
    produce(config, [*meet, *records, *ticks()])
    worker = Worker(path, tmp_path / "worker.log").start()
    finals: dict[tuple[str, str, int], dict[str, Any]] = {}
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not set(expected) <= set(finals):
            for _, r in read(config, config.metrics_topic, follow=False):
                if r["final"] and not r["segment"] and r["window"]["name"] == "tumbling_5m":
                    finals[(r["model"], "tumbling_5m", r["window"]["start"])] = r
        time.sleep(2)  # one more health record after the last flush
        health = latest_health(config)
    finally:
        worker.stop()
    assert_exact(finals, expected)
    assert {k[0] for k in expected} == {"nba-game-outcome", "challenger"}
    labels = sum(1 for r in records if r[1] == 1) + 40
    # A label's one outcome is decided by the first prediction it meets: one that met the champion's
    # too late (its labels partition read ahead of its predictions) is late, though it pairs with the
    # challenger's. Every pair counts either way.
    assert health["labels"] == labels and health["joined_labels"] <= joined
    assert health["joined_labels"] + health["late_labels"] == labels - health["orphaned_labels"]
    assert health["pairs"] == sum(len(p) for p in expected.values()) + 40
    assert health["duplicate_predictions"] == 0 and health["balance"] == {"predictions": 0, "labels": 0}
