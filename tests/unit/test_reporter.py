"""The Reporter without a broker: checks at the call, never blocking, every call accounted for."""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
import uuid
from typing import Any

import orjson
import pytest

from stream import Reporter
from stream.config import Config
from stream.errors import InvalidRecord

NOWHERE = "127.0.0.1:1"  # nothing listens there: the broker is away


class Recording:
    """Stands in for the confluent-kafka producer, to see what the Reporter hands over."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []

    def produce(self, topic: str, value: bytes, key: bytes, on_delivery: Any) -> None:
        self.sent.append((topic, key, value))

    def poll(self, timeout: float) -> int:
        time.sleep(timeout)
        return 0

    def flush(self, timeout: float) -> int:
        return 0

    def purge(self) -> None:
        pass


@pytest.fixture
def reporter() -> Any:
    reporter = Reporter(NOWHERE, model="fraud", model_version="v3", config=Config(regression_models=["price-*"]))
    yield reporter
    reporter.close(timeout_s=0)


@pytest.mark.parametrize(("call", "reason"), [
    (lambda r: r.prediction("a", "1", model="  "), "only spaces"),
    (lambda r: r.prediction("a", "1", scores={"1": 1.5}), "must be a probability in [0, 1]"),
    (lambda r: r.prediction("a", 0.5), "is not a class"),
    (lambda r: r.prediction("a", "x", model="price-eu"), "regression models need numbers"),
    (lambda r: r.prediction("a", float(2**60)), "beyond 2^53"),
    (lambda r: r.prediction("a", "1", timestamp=time.time() + 7200), "ahead of this machine's clock"),
    (lambda r: r.prediction("a", "1", timestamp="2026-11-30 06:00:00Z"), "not an RFC 3339 date-time"),
    (lambda r: r.prediction("a", "1", model="fr\naud"), "control characters"),
    (lambda r: r.prediction("a", "1", segment={"country": 49}), "must be a non-empty short string"),
    (lambda r: r.prediction("a", "1", scores={1: 0.9}), "classes must be non-empty strings"),
    (lambda r: r.prediction("a", "1", segment={1: "x"}), "keys must be strings"),
    (lambda r: r.prediction("a" * 300, "1"), "over the limit of 256"),
    (lambda r: r.prediction(None, "1"), "missing field 'request_id'"),
    (lambda r: r.label("a", None), "'label' is null"),
    (lambda r: r.label(True, "1"), "'request_id' must be a string"),
])
def test_an_invalid_record_raises_at_the_call_with_the_reason_and_is_not_sent(reporter: Reporter, call: Any,
                                                                             reason: str) -> None:
    reporter._producer = Recording()
    with pytest.raises(InvalidRecord, match=re.escape(reason)):
        call(reporter)
    assert reporter._producer.sent == []
    assert reporter.stats().invalid == 1 and reporter.stats().accepted == 0


def test_records_are_keyed_by_request_id_whatever_its_type(reporter: Reporter) -> None:
    reporter._producer = recording = Recording()
    rid = uuid.uuid4()
    reporter.prediction(rid, True, scores={"true": 0.7, "false": 0.3}, segment={"country": "DE"}, timestamp=1.5e9)
    reporter.label(12345678901234567890, "true")
    reporter.prediction(reporter.new_request_id(), 3.0, model="price-eu", model_version="v1")
    (topic, key, value), (label_topic, label_key, label), (_, other_key, _) = recording.sent
    assert (topic, key, label_topic, label_key) == ("predictions", str(rid).encode(), "labels", b"12345678901234567890")
    assert orjson.loads(value) == {"request_id": str(rid), "model": "fraud", "model_version": "v3", "timestamp": 1.5e9,
                                   "prediction": True, "scores": {"true": 0.7, "false": 0.3},
                                   "segment": {"country": "DE"}}
    assert abs(orjson.loads(label)["timestamp"] - time.time()) < 5  # now, by default
    assert len(other_key) == 32 and other_key != key


def test_with_the_broker_away_calls_return_at_once_and_what_the_buffer_cannot_hold_is_dropped(
        caplog: pytest.LogCaptureFixture) -> None:
    reporter = Reporter(NOWHERE, model="fraud", buffer_records=1000)
    took = []
    for i in range(5000):
        started = time.perf_counter()
        reporter.prediction(str(i), "1", scores={"0": 0.2, "1": 0.8})
        took.append(time.perf_counter() - started)
    took.sort()  # a call that waited for the broker would take its timeouts (seconds): far above this bound
    assert took[int(len(took) * 0.99)] < 0.05, f"p99 {took[int(len(took) * 0.99)] * 1e3:.2f} ms"
    stats = reporter.stats()
    assert (stats.accepted, stats.dropped, stats.waiting, stats.delivered) == (1000, 4000, 1000, 0)
    assert caplog.text.count("the local buffer is full") == 1  # once per kind, not per record
    closed = reporter.close(timeout_s=0)
    assert (closed.accepted, closed.failed, closed.waiting, closed.dropped) == (1000, 1000, 0, 4000)


def test_when_full_block_waits_up_to_its_timeout_then_drops() -> None:
    reporter = Reporter(NOWHERE, model="fraud", buffer_records=10, when_full="block", block_timeout_s=0.05)
    for i in range(10):
        reporter.label(str(i), "1")
    started = time.monotonic()
    reporter.label("one more", "1")
    assert time.monotonic() - started >= 0.05
    assert reporter.close(timeout_s=0).dropped == 1
    with pytest.raises(ValueError, match="when_full"):
        Reporter(NOWHERE, when_full="wait")


def test_delivery_failures_reach_the_callback_and_the_log_once(caplog: pytest.LogCaptureFixture) -> None:
    failures: list[tuple[str, str, str]] = []
    reporter = Reporter(NOWHERE, model="fraud", on_error=lambda *failure: failures.append(failure))
    for i in range(3):
        reporter.prediction(f"r{i}", "1")
    with caplog.at_level(logging.WARNING, logger="mlmon.reporter"):
        assert reporter.close(timeout_s=0.2).failed == 3
    assert sorted(rid for _, rid, _ in failures) == ["r0", "r1", "r2"]
    assert {kind for kind, _, _ in failures} == {"prediction"}
    assert caplog.text.count("could not be delivered") == 1


def test_many_threads_share_one_reporter_and_every_call_is_counted() -> None:
    with Reporter(NOWHERE, model="fraud", buffer_records=100_000) as reporter:
        def send(thread: int) -> None:
            for i in range(2000):
                reporter.prediction(f"{thread}-{i}", "1")
                with contextlib.suppress(InvalidRecord):
                    reporter.label(f"{thread}-{i}", None)  # type: ignore[arg-type]
        threads = [threading.Thread(target=send, args=(t,)) for t in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        stats = reporter.stats()
        assert (stats.accepted, stats.invalid, stats.waiting) == (16_000, 16_000, 16_000)
        assert reporter.close(timeout_s=0).failed == 16_000  # and leaving the block closes nothing twice


def test_from_config_takes_the_worker_s_topics_and_limits(tmp_path: Any) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(f"broker: kafka://{NOWHERE}\npredictions_topic: preds\nlabels_topic: truth\n"
                    "max_record_bytes: 200\n")
    reporter = Reporter.from_config(path, model="fraud")
    reporter._producer = recording = Recording()
    reporter.prediction("a", "1")
    reporter.label("a", "1")
    assert [topic for topic, _, _ in recording.sent] == ["preds", "truth"]
    with pytest.raises(InvalidRecord, match="over the limit of 200"):
        reporter.prediction("a", "1", segment={"k": "v" * 100, "l": "w" * 100})
