"""The benchmark suite, on a real broker, in one run:

    python -m benchmarks.run --pairs 1000000 [--report report.json] [--repeat 3] [--partitions 8]

1. ceiling: a raw confluent-kafka consumer that reads and JSON-decodes both input topics;
   aiokafka_floor: the same with aiokafka (faust's client), with the worker's fetch sizes;
   faust_floor: a faust agent that only counts both inputs (faust's own per-message path);
2. `mlmon worker` end to end (workers resumed with the backlog waiting -> last final metric
   record), 1 and 2 processes, each run on fresh input topics: the processes form their group,
   then are stopped while the backlog is sent; and 1 process with half of the labels on another
   partition than their request's (``worker1_misrouted``: forwarded through the repartition topic);
3. the core alone: `mlmon replay` on the same records, from JSONL files;
4. alert latency: producing the decisive label -> its event on the alerts topic, p50/p99 over
   --crossings crossings, with --background-rate pairs/s of other traffic;
5. worker RSS per pending (never labeled) prediction, with --pending of them, and the time a
   restarted worker takes to rebuild that state; with --join-memory-mb, the worker's join keeps
   that much in memory and the rest on disk (a 60-day TTL), and the report adds its RSS, the
   pending predictions on disk and the store's bytes per pending prediction.

The broker is KAFKA_BOOTSTRAP_SERVERS, or Kafka from its jars (tests/kafka_broker.py). Writes the
JSON report (benchmarks/results/<date>-<commit>.json unless --report says) and a Markdown table
next to it (.md), and prints each figure's ratio to the ceiling.
Medians over --repeat runs, taken in turns (ceiling, floor, worker1, worker2, replay, then again),
so that the shared machine's drift reaches every figure alike. Never part of the test command.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, ConsumerGroupState, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from benchmarks.core import replay_run
from stream.config import Config
from stream.kafka.admin import client_settings, ensure_topics, planned_topics
from stream.kafka.produce import Outgoing, closing_ticks, produce, producer, scenario_records
from stream.kafka.routing import partition_of
from stream.kafka.tail import read
from stream.simulate import Scenario, draws
from tests.kafka_broker import JarBroker

ROOT = Path(__file__).resolve().parent.parent

START = 1_767_225_600.0
THROUGHPUTS = ("ceiling_pairs_per_s", "aiokafka_floor_pairs_per_s", "faust_floor_pairs_per_s",
               "worker1_pairs_per_s", "worker1_misrouted_pairs_per_s", "worker2_pairs_per_s", "replay_pairs_per_s")
SAVE_EVERY_S = 30  # rss: the worker's checkpoint_interval; the restart comes after one more
TICK_TS = START + 10_000_000  # far-future records on every partition close every window


@contextmanager
def broker() -> Iterator[str]:
    address = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if address:
        yield address
        return
    jars = JarBroker()
    try:
        yield jars.start().bootstrap
    finally:
        jars.remove()


def config_for(bootstrap: str, folder: Path, partitions: int, inputs: str, extra: str = "",
               windows: str = "tumbling 1h", ttl: str = "1h") -> tuple[Config, Path]:
    """A worker config on the shared input topics, with its own group, state and output topics."""
    run = uuid.uuid4().hex[:8]
    text = (f"broker: {bootstrap}\npartitions: {partitions}\napp_id: mlmon-bench-{run}\n"
            f"data_dir: {folder / run}\nmetrics_port: 0\njoin_ttl: {ttl}\nwindows: [{windows}]\n"
            f"predictions_topic: predictions-{inputs}\nlabels_topic: labels-{inputs}\n"
            + "".join(f"{t}_topic: {t}-{run}\n" for t in ("metrics", "alerts", "health", "partials", "repartition"))
            + f"dead_letters_topic: dead-{run}\n" + extra)
    path = folder / f"{run}.yaml"
    path.write_text(text)
    config = Config.load(path)
    ensure_topics(config)
    return config, path


def forget_run(config: Config) -> None:
    """Delete a run's topics (inputs, outputs, changelogs) and its workers' state: a full benchmark
    writes some 20 GB, which would otherwise stay on the broker's disk."""
    admin = AdminClient(client_settings(config))
    own = planned_topics(config)
    names = [t for t in admin.list_topics(timeout=30).topics if t in own or t.startswith(f"{config.app_id}-")]
    for future in admin.delete_topics(names, operation_timeout=30).values() if names else ():
        with contextlib.suppress(KafkaException):  # already gone
            future.result()
    for state in Path(config.data_dir).parent.glob(f"{Path(config.data_dir).name}*"):
        shutil.rmtree(state, ignore_errors=True)


def ticks(partitions: int) -> Iterator[Outgoing]:
    return closing_ticks(partitions * 10, TICK_TS)


def workload(pairs: int) -> Scenario:
    """Realistic records (scores, a segment: about 260 bytes a prediction), labels within minutes."""
    return Scenario(pairs=pairs, start_ts=START, rate_per_s=100.0, label_delay_mean_s=60.0, seed=1)


def rss_bytes(pid: int, field: str = "VmRSS") -> int:
    """The process's resident memory now, or at its peak with ``field="VmHWM"``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    return 0


class Workers:
    def __init__(self, path: Path, count: int, log: Path) -> None:
        self.path, self.count, self.log = path, count, log
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> Workers:
        for i in range(self.count):
            own = self.path.with_name(f"{self.path.stem}-{i}.yaml")
            text = self.path.read_text()  # each process its own state folder: <data_dir>-<i>
            own.write_text(re.sub(r"^(data_dir: .*)$", rf"\g<1>-{i}", text, count=1, flags=re.M) if i else text)
            with self.log.open("ab") as out:
                self.procs.append(subprocess.Popen([sys.executable, "-m", "stream.cli", "worker", "--config", str(own)],
                                                   stdout=out, stderr=subprocess.STDOUT))
        return self

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.procs.clear()


def latest_health(config: Config) -> dict[int, dict[str, Any]]:
    """The newest health record of each worker process."""
    return {h["pid"]: h for _, h in read(config, config.health_topic, follow=False)}


def ceiling_run(config: Config, total: int) -> float:
    """Pairs per second of a consumer that only reads and decodes (the most any monitor could do)."""
    consumer = Consumer({**client_settings(config), "group.id": f"ceiling-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([config.predictions_topic, config.labels_topic])
    seen, started = 0, None
    try:
        while seen < total:
            for message in consumer.consume(10_000, 1.0):
                if message.error() is None:
                    started = started or time.perf_counter()
                    orjson.loads(message.value() or b"null")
                    seen += 1
        return total / 2 / (time.perf_counter() - (started or 0))
    finally:
        consumer.close()


def aiokafka_floor_run(config: Config, total: int) -> float:
    """Pairs per second of a raw aiokafka consumer (the client faust uses) that only reads and
    decodes, with the worker's fetch sizes: the most any worker on aiokafka could do."""
    import asyncio

    from aiokafka import AIOKafkaConsumer

    from stream.kafka.worker import FETCH_MAX_BYTES, FETCH_MAX_WAIT_MS, PARTITION_FETCH_MAX_BYTES

    async def consume() -> float:
        consumer = AIOKafkaConsumer(config.predictions_topic, config.labels_topic, bootstrap_servers=config.broker,
                                    group_id=f"aiokafka-floor-{uuid.uuid4().hex}", auto_offset_reset="earliest",
                                    enable_auto_commit=False, fetch_max_bytes=FETCH_MAX_BYTES,
                                    max_partition_fetch_bytes=PARTITION_FETCH_MAX_BYTES,
                                    fetch_max_wait_ms=FETCH_MAX_WAIT_MS)
        await consumer.start()
        seen, started = 0, None
        try:
            while seen < total:
                for messages in (await consumer.getmany(timeout_ms=1000, max_records=10_000)).values():
                    started = started or time.perf_counter()
                    for message in messages:
                        orjson.loads(message.value or b"null")
                    seen += len(messages)
            return total / 2 / (time.perf_counter() - (started or 0))
        finally:
            await consumer.stop()

    return asyncio.run(consume())


def faust_floor_run(config: Config, folder: Path, total: int) -> float:
    """Pairs per second of a faust agent that only counts the raw inputs (benchmarks/faust_floor.py)."""
    env = {**os.environ, "MLMON_FLOOR_BROKER": config.broker, "MLMON_FLOOR_TOTAL": str(total),
           "MLMON_FLOOR_TOPICS": f"{config.predictions_topic},{config.labels_topic}",
           "MLMON_FLOOR_DIR": str(folder / f"floor-{uuid.uuid4().hex[:8]}")}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "faust_floor.py"), "worker", "-l", "warn"],
                         env=env, capture_output=True, text=True, timeout=3600, check=False)
    rates = [float(line.split("FLOOR ")[1]) for line in (out.stdout + out.stderr).splitlines() if "FLOOR " in line]
    assert rates, out.stderr[-2000:]
    return rates[0] / 2


Encoded = list[tuple[int, bytes, bytes]]  # (0 prediction | 1 label, key, value)


def encode(records: Iterator[Outgoing]) -> Encoded:
    return [(kind, str(record["request_id"]).encode(), orjson.dumps(record)) for _, kind, record in records]


def send(config: Config, encoded: Encoded, misroute: bool = False) -> None:
    """Encoded records onto the config's input topics as fast as librdkafka takes them; with
    ``misroute``, every other label on the partition after its request's."""
    client = producer(config, **{"linger.ms": 50, "batch.num.messages": 10_000,
                                 "queue.buffering.max.messages": 1_000_000})
    topics = (config.predictions_topic, config.labels_topic)
    produce_one = client.produce
    labels = 0
    for kind, key, value in encoded:
        partition = -1  # the partitioner's (murmur2)
        if misroute and kind == 1:
            labels += 1
            if labels % 2:
                partition = (partition_of(key.decode(), config.partitions) + 1) % config.partitions
        try:
            produce_one(topics[kind], value, key, partition)
        except BufferError:
            client.flush(60)
            produce_one(topics[kind], value, key, partition)
    assert client.flush(120) == 0, "records left unsent"


def wait_for_group(config: Config, members: int, timeout_s: float = 120.0) -> None:
    """Until the worker group is stable with ``members`` members, each owning partitions."""
    admin = AdminClient(client_settings(config))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            group = admin.describe_consumer_groups([config.app_id])[config.app_id].result(10)
            if (group.state == ConsumerGroupState.STABLE and len(group.members) == members
                    and all(m.assignment.topic_partitions for m in group.members)):
                return
        except KafkaException:
            pass  # the group does not exist yet
        time.sleep(0.5)
    raise TimeoutError(f"{members} workers did not form a stable group in {timeout_s} s")


def worker_run(bootstrap: str, folder: Path, partitions: int, count: int, encoded: Encoded,
               scenario: Scenario, misroute: bool = False) -> float:
    """Pairs per second of `count` worker processes, from the moment they are resumed with the
    backlog waiting to the last final record (see ``timed_workers``); ``misroute``: see ``send``."""
    windows = {int(d.prediction["timestamp"] // 3600) * 3600 for d in draws(scenario)}
    finals: dict[int, float] = {}

    def last_final(config: Config) -> float | None:
        for _, record in read(config, config.metrics_topic, follow=False):
            if record["final"] and record["model"] != "tick" and not record["segment"]:
                finals[record["window"]["start"]] = datetime.fromisoformat(record["emitted_at"]).timestamp()
        return max(finals.values()) if len(finals) == len(windows) else None

    pairs = sum(1 for d in draws(scenario) if d.label is not None)
    return pairs / timed_workers(bootstrap, folder, partitions, count, encoded, last_final, misroute)


def invalid_run(bootstrap: str, folder: Path, partitions: int, count: int) -> float:
    """Invalid records (a timestamp that is not one) per second of one worker, from its resumption
    to the first health record that counts them all (health records come once a second)."""
    encoded: Encoded = [(0, f"bad-{i}".encode(), orjson.dumps({"request_id": f"bad-{i}", "model": "m",
                                                                "timestamp": "noon", "prediction": "a"}))
                        for i in range(count)]

    def all_counted(config: Config) -> float | None:
        for _, health in read(config, config.health_topic, follow=False):
            if health.get("invalid_predictions", 0) >= count:
                return float(health["emitted_at"])
        return None

    return count / timed_workers(bootstrap, folder, partitions, 1, encoded, all_counted)


def timed_workers(bootstrap: str, folder: Path, partitions: int, count: int, encoded: Encoded,
                  done: Callable[[Config], float | None], misroute: bool = False) -> float:
    """Seconds from the moment ``count`` worker processes are resumed with ``encoded`` waiting to
    the time ``done`` finds (None: not yet). The workers form their group on empty input topics
    first and are then stopped (SIGSTOP) while the backlog is sent, so every process works from
    the first record (one that joined later would bring a rebalance into the figure) and the
    sender's CPU is not counted. Resumed, they take their first records within milliseconds
    (their fetches were answered meanwhile)."""
    config, path = config_for(bootstrap, folder, partitions, uuid.uuid4().hex[:8])
    workers = Workers(path, count, folder / f"worker-{count}.log").start()
    try:
        wait_for_group(config, count)
        time.sleep(2)  # the tables' (empty) recovery after the last assignment
        for proc in workers.procs:
            os.kill(proc.pid, signal.SIGSTOP)
        try:
            send(config, encoded, misroute)
        finally:
            resumed = time.time()
            for proc in workers.procs:
                os.kill(proc.pid, signal.SIGCONT)
        deadline = time.monotonic() + 3600
        while time.monotonic() < deadline:
            time.sleep(2)
            ended = done(config)
            if ended is not None:
                return ended - resumed
        raise AssertionError("the workers did not finish within an hour")
    finally:
        workers.stop()
        forget_run(config)


def background_records(stop: threading.Event) -> Iterator[Outgoing]:
    """A steady model at the current event time until ``stop``: each prediction, then its label."""
    for i in itertools.count():
        if stop.is_set():
            return
        ts = time.time()
        rid = f"bg-{i}"
        guess, truth = ("home_win", "away_win")[i % 2], ("home_win", "away_win")[i % 3 % 2]
        yield ts, 0, {"request_id": rid, "model": "background", "model_version": "v1", "timestamp": ts,
                      "prediction": guess, "scores": {"home_win": 0.7, "away_win": 0.3}, "segment": {"venue": "home"}}
        yield ts, 1, {"request_id": rid, "timestamp": ts, "label": truth}


def alert_latency(bootstrap: str, folder: Path, partitions: int, crossings: int, background_rate: float) -> list[float]:
    """Seconds from producing the label that crosses a rule's threshold to its event on the alerts
    topic. Each canary model first gets 10 wrong answers (the rule fires at min_samples), then 20
    right ones (it resolves), at the current event time, while a simulated model sends steady traffic."""
    inputs = uuid.uuid4().hex[:8]
    rules = ("rules:\n  - name: CanaryAccuracyLow\n    model: canary-*\n    metric: accuracy\n"
             "    window: tumbling_1h\n    below: 0.5\n    clear: 0.6\n    min_samples: 10\n")
    config, path = config_for(bootstrap, folder, partitions, inputs, extra=rules)
    workers = Workers(path, 1, folder / "worker-alerts.log").start()
    stop = threading.Event()
    def steady() -> None:
        produce(config, background_records(stop), rate_per_s=background_rate)

    sender = threading.Thread(target=steady, daemon=True)
    client = producer(config, **{"linger.ms": 0})
    events: list[tuple[float, str, str]] = []

    listening = threading.Event()

    def listen() -> None:
        """Every alert event as it comes, timed; ``listening`` once every partition of the alerts
        topic has been read to its end (assigned, not subscribed: no group to join first)."""
        consumer = Consumer({**client_settings(config), "group.id": f"alerts-{inputs}", "enable.auto.commit": False,
                             "enable.partition.eof": True})
        consumer.assign([TopicPartition(config.alerts_topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        at_end: set[int] = set()
        try:
            while not stop.is_set():
                message = consumer.poll(0.05)
                if message is None:
                    continue
                if message.error() is not None:
                    if message.error().code() == KafkaError._PARTITION_EOF:
                        at_end.add(message.partition() or 0)
                        if len(at_end) == partitions:
                            listening.set()
                    continue
                event = orjson.loads(message.value() or b"null")
                events.append((time.perf_counter(), event["labels"]["model"], event["status"]))
        finally:
            consumer.close()

    listener = threading.Thread(target=listen, daemon=True)
    try:
        wait_for_group(config, 1)  # latency of a running worker, not of its start: it owns its partitions,
        while "Worker ready" not in workers.log.read_text(errors="replace"):  # and has recovered its tables
            time.sleep(0.5)
        sender.start()
        listener.start()
        if not listening.wait(60):
            raise TimeoutError("the alerts topic could not be read to its end in 60 s")
        time.sleep(5)
        latencies = []
        for i in range(crossings // 2):
            model = f"canary-{i}"
            for wrong, count, expect in ((True, 10, "firing"), (False, 20, "resolved")):
                ts = time.time()
                for j in range(count):
                    rid = f"{model}-{inputs}-{wrong}-{j}"
                    client.produce(config.predictions_topic, key=rid.encode(), value=orjson.dumps(
                        {"request_id": rid, "model": model, "timestamp": ts, "prediction": "a"}))
                    client.produce(config.labels_topic, key=rid.encode(), value=orjson.dumps(
                        {"request_id": rid, "timestamp": ts, "label": "b" if wrong else "a"}))
                client.flush(10)
                sent = time.perf_counter()  # the decisive (last) label is out
                deadline = time.monotonic() + 60
                while not any(m == model and s == expect for _, m, s in events) and time.monotonic() < deadline:
                    time.sleep(0.002)
                arrived = [t for t, m, s in events if m == model and s == expect]
                latencies.append(arrived[0] - sent if arrived else float("inf"))
        return latencies
    finally:
        stop.set()
        workers.stop()
        forget_run(config)


def pending_memory(bootstrap: str, folder: Path, partitions: int, pending: int, memory_mb: float = 0.0
                   ) -> dict[str, float]:
    """Worker RSS growth per never-labeled prediction, and how long a restart takes to rebuild them;
    with ``memory_mb``, a 60-day TTL and that ``join_memory_mb``: most of them wait on disk."""
    extra, ttl = (f"join_memory_mb: {memory_mb}\n", "60d") if memory_mb else ("", "1d")  # none expires meanwhile
    extra += f"checkpoint_interval: {SAVE_EVERY_S}s\n"
    config, path = config_for(bootstrap, folder, partitions, uuid.uuid4().hex[:8], extra=extra, ttl=ttl)
    workers = Workers(path, 1, folder / "worker-rss.log").start()
    try:
        while "Worker ready" not in workers.log.read_text(errors="replace"):
            time.sleep(0.5)
        time.sleep(3)
        baseline = rss_bytes(workers.procs[0].pid)
        scenario = Scenario(pairs=pending, start_ts=START, rate_per_s=100.0, label_coverage=0.0, seed=3)
        produce(config, scenario_records(scenario))
        while sum(h["pending_predictions"] for h in latest_health(config).values()) < pending:
            time.sleep(2)
        loaded, peak = rss_bytes(workers.procs[0].pid), rss_bytes(workers.procs[0].pid, "VmHWM")
        health = list(latest_health(config).values())
        on_disk = sum(h.get("pending_on_disk_predictions", 0) for h in health)
        store = sum(h.get("join_store_bytes", 0) for h in health)
        time.sleep(SAVE_EVERY_S + 5)  # every partition's engine saved with all of them (see kafka.checkpoints)
        saves = [float(s) for s in re.findall(r"saved partition \d+'s engine in ([\d.]+) s",
                                               workers.log.read_text(errors="replace"))]
        workers.stop()
        restarted = time.monotonic()
        workers.start()
        while True:  # rebuilt once a health record of the new process shows every pending prediction
            healths = [h for h in latest_health(config).values() if h["pid"] == workers.procs[0].pid]
            if healths and healths[0]["pending_predictions"] >= pending:
                break
            time.sleep(0.5)
        recovery_s = time.monotonic() - restarted
        rebuilt = rss_bytes(workers.procs[0].pid)
        return {"rss_bytes_per_pending": (loaded - baseline) / pending, "rss_baseline_bytes": baseline,
                "rss_peak_bytes_per_pending": (peak - baseline) / pending,
                "rss_loaded_bytes": loaded, "rss_peak_bytes": peak, "recovery_s": recovery_s,
                "rss_bytes_per_pending_after_restart": (rebuilt - baseline) / pending,
                "rss_after_restart_bytes": rebuilt, "pending_on_disk": on_disk, "store_bytes": store,
                "save_s_max": max(saves)}
    finally:
        workers.stop()
        forget_run(config)


def median(values: list[float]) -> float:
    return statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--crossings", type=int, default=50)
    parser.add_argument("--background-rate", type=float, default=10_000.0, help="pairs/s during the alert test")
    parser.add_argument("--pending", type=int, default=1_000_000)
    parser.add_argument("--join-memory-mb", type=float, default=0.0,
                        help="rss: the worker's join_memory_mb, with a 60-day TTL (most pending on disk)")
    parser.add_argument("--skip", default="",
                        help="comma-separated: ceiling,aiokafka_floor,faust_floor,worker1,worker1_misrouted,worker2,"
                             "replay,invalid,alerts,rss")
    parser.add_argument("--report", type=Path, default=None,
                        help="default: benchmarks/results/<date>-<commit>.json")
    args = parser.parse_args()
    if args.report is None:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=False).stdout.strip() or "unknown"
        args.report = ROOT / "benchmarks" / "results" / f"{time.strftime('%Y-%m-%d')}-{commit}.json"
        args.report.parent.mkdir(parents=True, exist_ok=True)
    skip = set(filter(None, args.skip.split(",")))
    report: dict[str, Any] = {"pairs": args.pairs, "partitions": args.partitions, "repeat": args.repeat,
                              "python": sys.version.split()[0], "cpus": os.cpu_count()}
    runs: dict[str, list[float]] = {}
    scenario = workload(args.pairs)
    with broker() as bootstrap, tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        report["broker"] = bootstrap
        inputs = uuid.uuid4().hex[:8]
        config, _ = config_for(bootstrap, folder, args.partitions, inputs)
        started = time.perf_counter()
        encoded = encode(itertools.chain(scenario_records(scenario), ticks(args.partitions)))
        send(config, encoded)
        report["produce_s"] = round(time.perf_counter() - started, 1)
        total = len(encoded)
        runners: list[tuple[str, Callable[[], float]]] = [
            ("ceiling", lambda: ceiling_run(config, total)),
            ("aiokafka_floor", lambda: aiokafka_floor_run(config, total)),
            ("faust_floor", lambda: faust_floor_run(config, folder, total)),
            ("worker1", lambda: worker_run(bootstrap, folder, args.partitions, 1, encoded, scenario)),
            ("worker1_misrouted", lambda: worker_run(bootstrap, folder, args.partitions, 1, encoded, scenario,
                                                     misroute=True)),
            ("worker2", lambda: worker_run(bootstrap, folder, args.partitions, 2, encoded, scenario)),
            ("replay", lambda: replay_run(args.pairs, Config(), folder, 60.0)),
            ("invalid", lambda: invalid_run(bootstrap, folder, args.partitions, args.pairs)),
        ]
        runners = [(name, run) for name, run in runners if name not in skip]
        for _ in range(args.repeat):
            for name, run in runners:
                runs.setdefault(name, []).append(run())
                print(name, round(runs[name][-1]), flush=True)
        for name, _ in runners:
            unit = "records" if name == "invalid" else "pairs"  # invalid records, each dead-lettered
            report[f"{name}_{unit}_per_s"] = round(median(runs[name]))
        if "invalid" in runs and "worker1" in runs:
            report["invalid_records_over_worker1_pairs"] = round(
                report["invalid_records_per_s"] / report["worker1_pairs_per_s"], 3)
        if "worker1" in runs and "worker1_misrouted" in runs:
            report["worker1_misrouted_over_worker1"] = round(
                report["worker1_misrouted_pairs_per_s"] / report["worker1_pairs_per_s"], 3)
        if "worker1" in runs and "worker2" in runs:  # each pair of runs taken one after the other
            report["worker2_over_worker1"] = round(report["worker2_pairs_per_s"] / report["worker1_pairs_per_s"], 3)
            pairs = zip(runs["worker1"], runs["worker2"], strict=True)
            report["worker2_over_worker1_per_repeat"] = [round(two / one, 3) for one, two in pairs]
        if "alerts" not in skip:
            in_order = alert_latency(bootstrap, folder, args.partitions, args.crossings, args.background_rate)
            latencies = sorted(in_order)
            report["alert_crossings"] = len(latencies)
            report["alert_latency_s_in_order"] = [round(x, 3) for x in in_order]
            report["alert_background_pairs_per_s"] = args.background_rate
            report["alert_latency_p50_s"] = round(latencies[len(latencies) // 2], 3)
            report["alert_latency_p99_s"] = round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], 3)
        if "rss" not in skip:
            memory = pending_memory(bootstrap, folder, args.partitions, args.pending, args.join_memory_mb)
            report["pending"] = args.pending
            if args.join_memory_mb:
                report["join_memory_mb"] = args.join_memory_mb
                report["pending_on_disk"] = memory["pending_on_disk"]
                report["store_bytes_per_pending"] = round(memory["store_bytes"] / args.pending, 1)
                for name in ("rss_baseline_bytes", "rss_loaded_bytes", "rss_peak_bytes", "rss_after_restart_bytes"):
                    report[name.replace("_bytes", "_mib")] = round(memory[name] / (1 << 20), 1)
            report["rss_bytes_per_pending"] = round(memory["rss_bytes_per_pending"], 1)
            report["rss_peak_bytes_per_pending"] = round(memory["rss_peak_bytes_per_pending"], 1)
            report["recovery_s_for_pending"] = round(memory["recovery_s"], 1)
            report["engine_save_s_max"] = round(memory["save_s_max"], 2)
            report["rss_bytes_per_pending_after_restart"] = round(memory["rss_bytes_per_pending_after_restart"], 1)
        forget_run(config)
    report["runs"] = {k: [round(v) for v in vs] for k, vs in runs.items()}
    ceiling = report.get("ceiling_pairs_per_s")
    lines = ["| figure | value | ratio to ceiling |", "|---|---|---|"]
    for key, value in report.items():
        if key == "runs":
            continue
        ratio = f"{value / ceiling:.3f}" if ceiling and key in THROUGHPUTS else ""
        lines.append(f"| {key} | {value} | {ratio} |")
        if ratio:
            print(f"{key}: {value} ({ratio} of the ceiling)")
    args.report.write_text(json.dumps(report, indent=2) + "\n")
    args.report.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
