"""A worker whose consumer counted a changelog topic as 0 partitions (a metadata response read
just before the topic was visible) cannot write that table (``patches.table_writable``) until its
metadata is refreshed: it must heal within seconds (``worker.METADATA_MAX_AGE_MS``), not aiokafka's
default five minutes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from kafka_broker import Broker
from worker_harness import setup

STALE = """
import asyncio, os, sys, time
import faust
from stream.config import Config
from stream.kafka.admin import ensure_topics
from stream.kafka.patches import table_writable
from stream.kafka.worker import build_app

config = Config.load(sys.argv[1])
counts = ensure_topics(config)
app = build_app(config, {"predictions": counts[config.predictions_topic], "labels": counts[config.labels_topic]})
windows = app.tables["mlmon-windows"]


@app.task
async def stale_metadata() -> None:
    snapshot = lambda: app.consumer._thread._consumer._coordinator._metadata_snapshot
    while (snapshot().get(config.partials_topic) != config.partitions
           or not table_writable(windows, config.partials_topic)):
        await asyncio.sleep(0.1)
    windows._verified_source_topics_for_partitions.clear()
    snapshot()[windows.changelog_topic_name] = 0  # as read before the changelog was visible
    assert not table_writable(windows, config.partials_topic)
    started = time.monotonic()
    while not table_writable(windows, config.partials_topic):
        await asyncio.sleep(0.1)
    print(f"healed {time.monotonic() - started:.1f}", flush=True)
    os._exit(0)


faust.Worker(app, loglevel="warning", quiet=True).execute_from_commandline()
"""


def test_a_changelog_counted_as_zero_partitions_heals_within_seconds(kafka: Broker, tmp_path: Path) -> None:
    _, path = setup(kafka, tmp_path)
    ran = subprocess.run([sys.executable, "-c", STALE, str(path)], capture_output=True, text=True, timeout=90)
    healed = re.search(r"healed ([0-9.]+)", ran.stdout + ran.stderr)  # faust logs what the worker prints
    assert healed, f"exit {ran.returncode}: {ran.stdout[-1000:]} {ran.stderr[-3000:]}"
    assert float(healed[1]) < 15.0, healed[0]
