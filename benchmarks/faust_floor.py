"""The most a faust 0.15 agent can do here: consume both inputs as raw bytes and only count them.

    python benchmarks/faust_floor.py worker -l warn   (run by benchmarks/run.py, step "faust_floor")

Settings come from the environment (MLMON_FLOOR_BROKER, _TOPICS comma-separated, _TOTAL messages,
_DIR state folder); it prints "FLOOR <messages per second>" from the first message to the last,
then exits. Same app settings as `mlmon worker` where they matter for consuming.
"""

from __future__ import annotations

import os
import time
import uuid

import faust

env = os.environ
total = int(env["MLMON_FLOOR_TOTAL"])
app = faust.App(f"floor-{uuid.uuid4().hex[:8]}", broker=f"kafka://{env['MLMON_FLOOR_BROKER']}",
                datadir=env["MLMON_FLOOR_DIR"], web_enabled=False, consumer_auto_offset_reset="earliest",
                broker_commit_every=10_000, broker_commit_interval=1.0)
inputs = app.topic(*env["MLMON_FLOOR_TOPICS"].split(","), key_serializer="raw", value_serializer="raw")
seen = {"n": 0, "first": 0.0}


@app.agent(inputs, concurrency=1)
async def count(stream: faust.StreamT[bytes]) -> None:
    async for _ in stream.events():
        if not seen["n"]:
            seen["first"] = time.perf_counter()
        seen["n"] += 1
        if seen["n"] == total:
            print(f"FLOOR {total / (time.perf_counter() - seen['first']):.1f}", flush=True)
            os._exit(0)


if __name__ == "__main__":
    app.main()
