"""The Reporter's cost to a model service, on a real broker, from one thread:

    python -m benchmarks.reporter --calls 200000 --repeat 3

- ``reporter_calls_per_s``: ``Reporter.prediction()`` with scores and a segment (checked, encoded,
  handed to the producer), and its latency per call (p50, p99);
- ``produce_calls_per_s``: confluent-kafka's ``produce()`` of the same records already encoded, in
  the same run: what any client pays; the difference per call is what the Reporter adds.

Medians over --repeat runs, taken in turns. The broker is KAFKA_BOOTSTRAP_SERVERS, or Kafka from
its jars. Prints a JSON report (and writes it where --report says). Never part of the test command.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid
from pathlib import Path

import orjson

from benchmarks.run import START, broker
from stream import Reporter
from stream.config import Config
from stream.kafka.admin import ensure_topics
from stream.kafka.produce import producer


def records(calls: int) -> list[dict[str, object]]:
    return [{"request_id": str(uuid.uuid4()), "model": "fraud", "model_version": "v3", "timestamp": START + i,
             "prediction": "1" if i % 3 else "0", "scores": {"0": 0.25, "1": 0.75}, "segment": {"country": "DE"}}
            for i in range(calls)]


def reporter_run(config: Config, batch: list[dict[str, object]]) -> tuple[float, float, float]:
    """Calls per second, and the p50 and p99 of one call, in seconds."""
    reporter = Reporter.from_config(config, model="fraud", model_version="v3", buffer_records=len(batch) + 1)
    took = []
    started = time.perf_counter()
    for r in batch:
        t = time.perf_counter()
        reporter.prediction(r["request_id"], r["prediction"], scores=r["scores"], segment=r["segment"],  # type: ignore[arg-type]
                            timestamp=r["timestamp"])  # type: ignore[arg-type]
        took.append(time.perf_counter() - t)
    rate = len(batch) / (time.perf_counter() - started)
    stats = reporter.close(60)
    assert stats.delivered == len(batch), stats
    took.sort()
    return rate, took[len(took) // 2], took[int(len(took) * 0.99)]


def produce_run(config: Config, batch: list[dict[str, object]]) -> float:
    client = producer(config, **{"compression.type": "lz4", "queue.buffering.max.messages": len(batch) + 1})
    encoded = [(str(r["request_id"]).encode(), orjson.dumps(r)) for r in batch]
    started = time.perf_counter()
    for key, value in encoded:
        client.produce(config.predictions_topic, value=value, key=key)
        client.poll(0)
    rate = len(batch) / (time.perf_counter() - started)
    assert client.flush(60) == 0
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--report", type=Path)
    args = parser.parse_args()
    with broker() as bootstrap:
        run = uuid.uuid4().hex[:8]
        topics = ("predictions", "labels", "metrics", "alerts", "dead_letters", "health", "partials", "repartition")
        config = Config.from_mapping({"broker": bootstrap, "partitions": 8,
                                      **{f"{topic}_topic": f"{topic}-{run}" for topic in topics}})
        ensure_topics(config)
        batch = records(args.calls)
        runs: dict[str, list[float]] = {"reporter_calls_per_s": [], "produce_calls_per_s": [],
                                        "reporter_p50_us": [], "reporter_p99_us": []}
        for _ in range(args.repeat):
            rate, p50, p99 = reporter_run(config, batch)
            runs["reporter_calls_per_s"].append(rate)
            runs["reporter_p50_us"].append(p50 * 1e6)
            runs["reporter_p99_us"].append(p99 * 1e6)
            runs["produce_calls_per_s"].append(produce_run(config, batch))
        report = {name: round(statistics.median(values), 1) for name, values in runs.items()}
        added = 1e6 / report["reporter_calls_per_s"] - 1e6 / report["produce_calls_per_s"]
        report["added_us_per_call"] = round(added, 1)
        report["runs"] = {name: [round(v, 1) for v in values] for name, values in runs.items()}
        report["calls"] = args.calls
        text = json.dumps(report, indent=2)
        print(text)
        if args.report:
            args.report.write_text(text + "\n")


if __name__ == "__main__":
    main()
