"""``sample``: the worker keeps the same requests' predictions and labels on every partition (labels
sent without a key arrive on any partition and are forwarded), so its figures are scikit-learn's
on the sampled requests and replay's on the same records, stated with the rate and standard
errors; what it left out is counted."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson

from kafka_broker import Broker
from stream.config import Config
from stream.core.join import label_rank
from stream.core.sampling import Sampler
from stream.kafka.produce import produce
from stream.replay import replay
from tests.integration.kafka.test_worker_order import WINDOWS, requests
from worker_harness import TTL_S, Worker, assert_exact, final_records, latest_health, setup, ticks

RATE = 0.3


def test_keyless_labels_of_sampled_requests_give_scikit_learn_s_and_replay_s_figures(
        kafka: Broker, tmp_path: Path) -> None:
    from confluent_kafka import Producer

    config, path = setup(kafka, tmp_path, extra=f"sample: {RATE}\n")
    reqs = requests(4000, seed=31)
    produce(config, [(r["pred"]["timestamp"], 0, r["pred"]) for r in reqs])  # keyed by request id
    labels = [lab for r in reqs for lab in r["labels"]]
    sender = Producer({"bootstrap.servers": config.broker, "linger.ms": 5})  # no key: any partition
    for lab in labels:
        sender.produce(config.labels_topic, value=orjson.dumps(lab))
        sender.poll(0)
    assert sender.flush(30) == 0
    closing = list(ticks())
    produce(config, closing)
    sampler = Sampler(RATE)
    want: dict[tuple[str, int], list[tuple[str, str]]] = defaultdict(list)
    for r in reqs:
        if r["labels"] and sampler.keeps(r["pred"]["request_id"]):
            won = min(r["labels"], key=lambda lab: label_rank((lab["timestamp"], lab["label"])))
            for size, name in WINDOWS:
                want[(name, int(r["pred"]["timestamp"] // size) * size)].append((won["label"], r["pred"]["prediction"]))
    worker = Worker(path, tmp_path / "worker.log").start()
    try:
        finals = final_records(config, set(want), timeout_s=180, worker=worker)
        time.sleep(2)  # one more health record after the last flush
        health = latest_health(config)
    finally:
        worker.stop()
    assert_exact(finals, want)
    assert all(finals[key]["sample_rate"] == RATE and finals[key]["standard_errors"]["accuracy"] > 0 for key in want)
    sent_predictions = [r["pred"] for r in reqs] + [obj for _, kind, obj in closing if kind == 0]
    sent_labels = labels + [obj for _, kind, obj in closing if kind == 1]
    assert health["unsampled_predictions"] == sum(not sampler.keeps(p["request_id"]) for p in sent_predictions)
    assert health["unsampled_labels"] == sum(not sampler.keeps(lab["request_id"]) for lab in sent_labels)
    assert health["balance"] == {"predictions": 0, "labels": 0} and health["repartitioned"]["labels"] > 0

    files = {"p": tmp_path / "p.jsonl", "l": tmp_path / "l.jsonl"}
    files["p"].write_text("".join(json.dumps(r["pred"]) + "\n" for r in reqs))
    files["l"].write_text("".join(json.dumps(lab) + "\n" for lab in labels))
    (tmp_path / "replay.yaml").write_text(f"join_ttl: {TTL_S}s\nwindows: [tumbling 5m, tumbling 15m]\n"
                                          f"sample: {RATE}\n")
    replay(files["p"], files["l"], Config.load(tmp_path / "replay.yaml"), tmp_path / "m.jsonl", final_only=True)
    replayed: dict[tuple[str, int], dict[str, Any]] = {
        (r["window"]["name"], r["window"]["start"]): r for r in map(json.loads, (tmp_path / "m.jsonl").read_text()
                                                                    .splitlines()) if not r["segment"]}
    for key in want:
        fields = ("n", "confusion_matrix", "metrics", "sample_rate", "standard_errors")
        assert [finals[key][f] for f in fields] == [replayed[key][f] for f in fields], key
