"""Our patches to faust: task-free delivery only when faust's own could not have waited, raw
records for direct topics, tuned fetches and stores."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import faust
from faust.transport.consumer import Consumer
from faust.types import TP

from stream.kafka.patches import (
    RAW_TOPICS,
    deliver_without_tasks,
    delivery_check,
    raw_records_for_direct_topics,
    tune_fetches,
    tune_rocksdict_stores,
)

TOPIC = TP("predictions", 0)


def consumer(**changes: Any) -> Any:
    """A stand-in with what the check reads, in the state of a worker processing normally."""
    state = {"suspended": False, "flow_active": True, "locked": False, "buffered": 0, "full": False, **changes}
    suspend = asyncio.Event()
    if state["suspended"]:
        suspend.set()
    lock = SimpleNamespace(locked=lambda: state["locked"])
    queue = SimpleNamespace(full=lambda: state["full"])
    app = SimpleNamespace(
        flow_control=SimpleNamespace(is_active=lambda: state["flow_active"]),
        topics=SimpleNamespace(_tp_to_callback_lock=lock, _tp_index={TOPIC: [SimpleNamespace(queue=queue)]}),
        producer=SimpleNamespace(buffer=SimpleNamespace(size=state["buffered"], max_messages=100)),
    )
    return SimpleNamespace(app=app, suspend_flow=suspend)


def test_a_delivery_is_awaited_directly_only_when_nothing_can_hold_it() -> None:
    assert delivery_check(consumer())(TOPIC)
    assert delivery_check(consumer())(TP("labels", 3))  # a partition no stream reads
    for blocked in ({"suspended": True}, {"flow_active": False}, {"locked": True}, {"buffered": 101},
                    {"full": True}):
        assert not delivery_check(consumer(**blocked))(TOPIC), blocked


def test_the_patch_replaces_faust_s_fetch_loop_once() -> None:
    deliver_without_tasks()
    patched = Consumer._drain_messages
    deliver_without_tasks()
    assert Consumer._drain_messages is patched and getattr(patched, "_mlmon", False)


def test_stores_keep_large_values_in_uncompressed_blob_files_without_a_write_ahead_log(tmp_path: Any) -> None:
    from faust.stores.rocksdb import RocksDBOptions

    from stream.kafka.worker import STORE_OPTIONS

    tune_rocksdict_stores()
    options = {k: v for k, v in STORE_OPTIONS.items() if k != "driver"}
    db = RocksDBOptions(**options).open(tmp_path / "store")
    batch, mark = b"[" + b"1," * 4096 + b"1]", b"1700000000.5"
    db[b"batch/0/a"], db[b"\x00watermark/predictions/0"] = batch, mark
    assert db.property_int_value("rocksdb.cur-size-active-mem-table") > 0
    wal = [f for f in (tmp_path / "store").iterdir() if f.suffix == ".log"]
    assert all(f.stat().st_size == 0 for f in wal), "writes reached a write-ahead log"
    db.flush()
    blobs = [f for f in (tmp_path / "store").iterdir() if f.suffix == ".blob"]
    assert len(blobs) == 1 and blobs[0].stat().st_size > len(batch), "the batch is not in an uncompressed blob file"
    db.close()
    db = RocksDBOptions(**options).open(tmp_path / "store")
    assert (db[b"batch/0/a"], db[b"\x00watermark/predictions/0"]) == (batch, mark)
    db.close()


def test_direct_topics_records_come_as_the_batch_reader_makes_them_and_others_as_consumer_records() -> None:
    from aiokafka.consumer.fetcher import PartitionRecords
    from aiokafka.record.default_records import DefaultRecordBatchBuilder
    from aiokafka.record.memory_records import MemoryRecords
    from aiokafka.structs import ConsumerRecord, TopicPartition

    raw_records_for_direct_topics()
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=0, producer_id=-1,
                                        producer_epoch=-1, base_sequence=-1, batch_size=1 << 16)
    for offset in range(3):
        builder.append(offset, timestamp=1, key=None, value=b'{"n":%d}' % offset, headers=[])
    batch = bytes(builder.build())
    RAW_TOPICS.add("direct-predictions")

    def read(topic: str) -> list[Any]:
        return list(PartitionRecords(TopicPartition(topic, 0), MemoryRecords(batch), [], 0, None, None, True, 0))

    direct, other = read("direct-predictions"), read("partials")
    assert [(r.offset, r.value) for r in direct] == [(r.offset, r.value) for r in other] == [
        (0, b'{"n":0}'), (1, b'{"n":1}'), (2, b'{"n":2}')]
    assert not any(isinstance(r, ConsumerRecord) for r in direct)
    assert all(isinstance(r, ConsumerRecord) for r in other)


def test_the_worker_s_aiokafka_consumer_gets_the_fetch_cap_and_the_shorter_wait() -> None:
    tune_fetches(4 << 20, 100)

    async def created() -> Any:
        app = faust.App("mlmon-test-fetches", broker="kafka://127.0.0.1:1", web_enabled=False)
        consumer = app.consumer._thread._create_worker_consumer(app.transport)  # not started: no broker
        await consumer.stop()
        return consumer

    consumer = asyncio.run(created())
    assert (consumer._fetch_max_bytes, consumer._fetch_max_wait_ms) == (4 << 20, 100)
