"""The worker's figures depend on the records, not on the order they arrive in: labels sent without
a key (so forwarded to their request's partition through the repartition topic), with duplicate
labels of different values whose later-stamped one is often sent first, give the figures of
scikit-learn on the winning labels and of replay on the same records, under either
``duplicate_labels`` rule, and with ``sample``, of the sampled requests."""

from __future__ import annotations

import json
import random
import re
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest

from kafka_broker import Broker
from stream.config import Config
from stream.core.join import label_rank
from stream.core.sampling import Sampler
from stream.kafka.produce import produce
from stream.replay import replay
from worker_harness import START, TTL_S, Worker, assert_exact, final_records, latest_health, setup, ticks

WINDOWS = ((300, "tumbling_5m"), (900, "tumbling_15m"))


def requests(n: int, seed: int) -> list[dict[str, Any]]:
    """Predictions over about an hour; 85% labeled; a third of those twice, with another value a
    few seconds apart (or at the same second: the value decides)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        ts = START + i * 0.8
        request: dict[str, Any] = {"pred": {"request_id": f"req-{i}", "model": "m", "timestamp": ts,
                                            "prediction": rng.choice("ab")}, "labels": []}
        if rng.random() < 0.85:
            first = ts + rng.uniform(1, 40)
            request["labels"].append({"request_id": f"req-{i}", "timestamp": first, "label": rng.choice("ab")})
            if rng.random() < 0.33:
                again = first + rng.choice([0, 0, 1, 2, 5])
                value = "b" if request["labels"][0]["label"] == "a" else "a"
                request["labels"].append({"request_id": f"req-{i}", "timestamp": again, "label": value})
                rng.shuffle(request["labels"])  # the later-stamped one first, half the time
        out.append(request)
    return out


def expected(reqs: list[dict[str, Any]], rule: str) -> dict[tuple[str, int], list[tuple[str, str]]]:
    out: dict[tuple[str, int], list[tuple[str, str]]] = defaultdict(list)
    for r in reqs:
        if not r["labels"]:
            continue
        ranked = sorted(r["labels"], key=lambda lab: label_rank((lab["timestamp"], lab["label"])))
        won = ranked[0] if rule == "earliest" else ranked[-1]
        assert won["timestamp"] - r["pred"]["timestamp"] <= TTL_S
        for size, name in WINDOWS:
            out[(name, int(r["pred"]["timestamp"] // size) * size)].append((won["label"], r["pred"]["prediction"]))
    return out


@pytest.mark.parametrize(("rule", "sample"), [("earliest", 1.0), ("latest", 1.0), ("earliest", 0.3)])
def test_keyless_duplicate_labels_in_any_order_give_scikit_learn_s_and_replay_s_figures(
        kafka: Broker, tmp_path: Path, rule: str, sample: float) -> None:
    """``sample`` below 1: the worker keeps the same requests' predictions and labels on every
    partition, so its figures are those of the sampled requests, stated with the rate and standard
    errors, and what it left out is counted."""
    from confluent_kafka import Producer

    settings = f"duplicate_labels: {rule}\nsample: {sample}\n"
    config, path = setup(kafka, tmp_path, extra=settings)
    sampler = Sampler(sample)
    every = requests(4000, seed=28)
    reqs = [r for r in every if sampler.keeps(r["pred"]["request_id"])]  # what the figures count
    produce(config, [(r["pred"]["timestamp"], 0, r["pred"]) for r in every])  # keyed by request id
    labels = [lab for r in every for lab in r["labels"]]  # by request, the later-stamped duplicate often first
    sender = Producer({"bootstrap.servers": config.broker, "linger.ms": 5})  # no key: any partition
    for lab in labels:
        sender.produce(config.labels_topic, value=orjson.dumps(lab))
        sender.poll(0)
    assert sender.flush(30) == 0
    closing = list(ticks())
    produce(config, closing)
    worker = Worker(path, tmp_path / "worker.log").start()
    try:
        want = expected(reqs, rule)
        finals = final_records(config, set(want), timeout_s=180, worker=worker)
        time.sleep(2)  # one more health record after the last flush
        health = latest_health(config)
    finally:
        worker.stop()
    assert_exact(finals, want)
    duplicates = sum(len(r["labels"]) - 1 for r in reqs if r["labels"])
    assert health["duplicate_labels"] == duplicates and health["balance"] == {"predictions": 0, "labels": 0}
    assert health["repartitioned"]["labels"] > 0
    sent = [r["pred"] for r in every] + labels + [obj for _, _, obj in closing]
    left_out = [obj for obj in sent if not sampler.keeps(obj["request_id"])]
    assert health["unsampled_predictions"] == sum("prediction" in obj for obj in left_out)
    assert health["unsampled_labels"] == sum("label" in obj for obj in left_out)
    assert (sample < 1) == all("sample_rate" in finals[key] and "standard_errors" in finals[key] for key in want)
    assert re.search(r"pending: \d+ predictions \(\d+ on disk\), \d+ labels \(\d+ on disk\); \d+ MiB resident, "
                     r"\d+ MiB in the join.s store on disk", worker.log.read_text())

    files = {"p": tmp_path / "p.jsonl", "l": tmp_path / "l.jsonl"}
    files["p"].write_text("".join(json.dumps(r["pred"]) + "\n" for r in every))
    files["l"].write_text("".join(json.dumps(lab) + "\n" for lab in labels))
    (tmp_path / "replay.yaml").write_text(f"join_ttl: {TTL_S}s\nwindows: [tumbling 5m, tumbling 15m]\n{settings}")
    replay(files["p"], files["l"], Config.load(tmp_path / "replay.yaml"), tmp_path / "m.jsonl", final_only=True)
    replayed = {(r["window"]["name"], r["window"]["start"]): r
                for r in map(json.loads, (tmp_path / "m.jsonl").read_text().splitlines())
                if r["final"] and not r["segment"]}
    fields = ("n", "confusion_matrix", "metrics", "sample_rate", "standard_errors")
    for key in want:
        assert [finals[key].get(f) for f in fields] == [replayed[key].get(f) for f in fields], key
