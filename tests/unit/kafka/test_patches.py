"""Our patches to faust: task-free delivery only when faust's own could not have waited, and
seeks back to messages faust skipped."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from faust.transport.consumer import Consumer
from faust.types import TP

from stream.kafka.patches import (
    Handled,
    Rereader,
    _delivery_cannot_block,
    deliver_without_tasks,
    pending_rereads,
    seek_for_rereads,
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
    assert _delivery_cannot_block(consumer(), TOPIC)
    assert _delivery_cannot_block(consumer(), TP("labels", 3))  # a partition no stream reads
    for blocked in ({"suspended": True}, {"flow_active": False}, {"locked": True}, {"buffered": 101},
                    {"full": True}):
        assert not _delivery_cannot_block(consumer(**blocked), TOPIC), blocked


def test_the_patch_replaces_faust_s_fetch_loop_once() -> None:
    deliver_without_tasks()
    patched = Consumer._drain_messages
    deliver_without_tasks()
    assert Consumer._drain_messages is patched and getattr(patched, "_mlmon", False)


def test_a_hole_that_lasts_is_read_again_once_and_a_rebalance_forgets_it(monkeypatch: Any) -> None:
    handled = Handled()
    for offset in [*range(0, 5), *range(6, 9)]:  # offset 5 was skipped
        handled.add(TOPIC, offset)
    rereader = Rereader(handled)
    state: Any = SimpleNamespace(_committed_offset={TOPIC: 0}, assignment=lambda: {TOPIC, TP("other", 0)})
    clock = iter([100.0, 100.5, 102.1, 102.2])
    monkeypatch.setattr("stream.kafka.patches.time.monotonic", lambda: next(clock))
    rereader.check(state, {"predictions"})
    rereader.check(state, {"predictions"})
    assert pending_rereads(state) == {}  # half a second: it may be in flight
    rereader.check(state, {"predictions"})
    assert pending_rereads(state) == {TOPIC: 5} and rereader.rereads == 1
    rereader.forget(state)
    assert pending_rereads(state) == {} and rereader.suspects == {}


def test_the_fetch_loop_seeks_only_partitions_still_assigned() -> None:
    sought: list[tuple[TP, int]] = []

    async def seek(tp: TP, offset: int) -> None:
        sought.append((tp, offset))

    state: Any = SimpleNamespace(assignment=lambda: {TOPIC}, seek=seek)
    rereads = {TOPIC: 5, TP("labels", 1): 7}
    asyncio.run(seek_for_rereads(state, rereads))
    assert sought == [(TOPIC, 5)] and rereads == {}
