"""Our patches to faust: task-free delivery only when faust's own could not have waited, and
messages in offset order with seeks back to those faust skipped."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from faust.transport.consumer import Consumer
from faust.types import TP

from stream.kafka.patches import (
    Handled,
    Sequencer,
    deliver_without_tasks,
    delivery_check,
    rewinds,
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


def test_messages_count_in_offset_order_and_a_gap_has_the_fetch_loop_seek_back() -> None:
    handled = Handled()
    sequencer = Sequencer(handled)
    state: Any = SimpleNamespace(_committed_offset={TOPIC: 10})
    assert [sequencer.admit(state, TOPIC, offset) for offset in (10, 11, 11, 9)] == [True, True, False, False]
    assert rewinds(state).asked == {}  # duplicates: already handled
    assert sequencer.admit(state, TOPIC, 13) is False  # 12 was skipped by faust
    assert rewinds(state).asked == {TOPIC: 12} and sequencer.rereads == 1
    assert sequencer.admit(state, TOPIC, 14) is False and sequencer.rereads == 1  # same fetch: asked once
    rewinds(state).asked.clear()  # the fetch loop sought there
    assert [sequencer.admit(state, TOPIC, offset) for offset in (12, 13, 14)] == [True, True, True]


def test_after_a_reset_counting_resumes_at_the_first_message_not_saved() -> None:
    handled = Handled()
    sequencer = Sequencer(handled)
    state: Any = SimpleNamespace(_committed_offset={})
    assert sequencer.admit(state, TOPIC, 0) is None  # no commit, and the log's start not known yet
    handled.earliest[TOPIC] = 0
    for offset in range(0, 5):
        assert sequencer.admit(state, TOPIC, offset)
    for offset in range(0, 3):  # saved; 3 and 4 were not when the rebalance came
        handled.add(TOPIC, offset)
    sequencer.reset()
    assert sequencer.admit(state, TOPIC, 4) is False and rewinds(state).asked == {TOPIC: 3}
    assert sequencer.admit(state, TOPIC, 3) is True


def test_the_fetch_loop_seeks_assigned_partitions_and_learns_what_the_log_lacks() -> None:
    sought: list[tuple[TP, int]] = []

    async def seek(tp: TP, offset: int) -> None:
        sought.append((tp, offset))

    state: Any = SimpleNamespace(assignment=lambda: {TOPIC}, seek=seek, _committed_offset={TOPIC: 0})
    handled = Handled()
    sequencer = Sequencer(handled)
    assert sequencer.admit(state, TOPIC, 0) and sequencer.admit(state, TOPIC, 1)
    assert sequencer.admit(state, TOPIC, 5) is False  # 2 missing: faust skipped it, or it is not there
    rewinds(state).asked[TP("labels", 1)] = 7  # not assigned here any more
    asyncio.run(rewinds(state).seek(state))
    assert sought == [(TOPIC, 2)] and rewinds(state).asked == {}
    rewinds(state).fetched(TOPIC, 4)  # the log's next message after offset 2 is 4
    assert sequencer.admit(state, TOPIC, 4) is True  # 2 and 3 are not waited for
    handled.add(TOPIC, 0, 1)  # saved
    handled.add(TOPIC, 4)
    assert handled.reach(TOPIC, 0) == 5  # the commit guard goes past 2 and 3


def test_a_seek_that_lands_where_it_asked_finds_nothing_missing() -> None:
    state: Any = SimpleNamespace()
    rewinds(state).sought[TOPIC] = 2
    rewinds(state).fetched(TOPIC, 2)
    assert rewinds(state).found == {} and rewinds(state).sought == {}
