"""mlmon's offset protocol: messages in offset order, seeks back to those faust skipped, and
partitions read again when they stop moving."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from faust.types import TP

from stream.kafka.offsets import REREAD_AFTER_S, Handled, Sequencer, rewinds
from stream.kafka.patches import committed_offset

TOPIC = TP("predictions", 0)


def test_messages_count_in_offset_order_and_a_gap_has_the_fetch_loop_seek_back() -> None:
    handled = Handled()
    sequencer = Sequencer(handled, committed_offset)
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
    sequencer = Sequencer(handled, committed_offset)
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
    sequencer = Sequencer(handled, committed_offset)
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


def test_a_partition_whose_last_messages_came_during_a_rebalance_is_read_again() -> None:
    state: Any = SimpleNamespace(_committed_offset={TOPIC: 10}, assignment=lambda: {TOPIC})
    sequencer = Sequencer(Handled(), committed_offset)
    for offset in (10, 11, 12):  # the last messages in the log, delivered while nothing may be handled
        sequencer.skipped(TOPIC, offset)
    assert sequencer.stalled(state, now=100.0) == []  # noticed; maybe in flight
    assert sequencer.stalled(state, now=100.0 + REREAD_AFTER_S / 2) == [] and rewinds(state).asked == {}
    assert sequencer.stalled(state, now=100.0 + REREAD_AFTER_S) == ["predictions[0]"]
    assert rewinds(state).asked == {TOPIC: 10} and sequencer.rereads == 1
    assert sequencer.stalled(state, now=100.5 + REREAD_AFTER_S) == ["predictions[0]"]  # asked once per interval
    assert sequencer.rereads == 1
    rewinds(state).asked.clear()  # the fetch loop sought there
    assert [sequencer.admit(state, TOPIC, offset) for offset in (10, 11, 12)] == [True, True, True]
    assert sequencer.stalled(state, now=200.0) == []  # caught up


def test_a_partition_that_keeps_moving_is_never_read_again() -> None:
    state: Any = SimpleNamespace(_committed_offset={TOPIC: 0}, assignment=lambda: {TOPIC})
    sequencer = Sequencer(Handled(), committed_offset)
    for offset in range(50):
        assert sequencer.admit(state, TOPIC, offset)
        assert sequencer.stalled(state, now=float(offset)) == []
    assert rewinds(state).asked == {} and sequencer.rereads == 0
