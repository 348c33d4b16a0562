"""A tiny faust app for the smoke test: counts words in a changelog-backed rocksdict table.

Run as ``python faust_counter_app.py worker``; settings come from the environment so the test
can point it at its broker, topics and data directory. Each update publishes the running count,
so a test can tell a recovered table (counts go on) from a lost one (counts restart at 1).
"""

from __future__ import annotations

import os

import faust

app = faust.App(
    os.environ["SMOKE_APP_ID"],
    broker=f"kafka://{os.environ['SMOKE_BOOTSTRAP']}",
    store="rocksdb://",  # faust picks the rocksdict driver when python-rocksdb is absent
    datadir=os.environ["SMOKE_DATA_DIR"],
    web_enabled=False,
    topic_partitions=1,
    topic_replication_factor=1,
    producer_acks=-1,
    broker_commit_every=1,
)
words = app.topic(os.environ["SMOKE_IN_TOPIC"], key_serializer="raw", value_serializer="raw")
counts_out = app.topic(os.environ["SMOKE_OUT_TOPIC"], key_serializer="raw", value_serializer="raw")
counts = app.Table("word-counts", default=int, partitions=1, options={"driver": "rocksdict"})


@app.agent(words, concurrency=1)
async def count(stream: faust.StreamT[bytes]) -> None:
    async for raw in stream:
        word = raw.decode()
        counts[word] += 1
        await counts_out.send(key=word.encode(), value=str(counts[word]).encode())


if __name__ == "__main__":
    app.main()
