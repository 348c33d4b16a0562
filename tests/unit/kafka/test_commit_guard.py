"""The commit guard: offsets go exactly as far as the messages whose records were saved."""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

from faust.transport.consumer import Consumer
from faust.types import TP

from stream.kafka.patches import Handled, commit_no_further_than_handled

TOPIC = TP("predictions", 0)


def consumer(committed: int | None, acked: list[int]) -> SimpleNamespace:
    return SimpleNamespace(_committed_offset=defaultdict(lambda: None, {TOPIC: committed}),
                           _acked=defaultdict(list, {TOPIC: list(acked)}),
                           _acked_index=defaultdict(set, {TOPIC: set(acked)}))


def test_commits_stop_at_the_first_message_not_saved_and_forget_only_what_they_pass() -> None:
    handled = Handled()
    commit_no_further_than_handled(handled)
    for offset in [*range(10, 20), *range(21, 30)]:  # 20 was acked by faust but never handled here
        handled.add(TOPIC, offset)
    state = consumer(committed=10, acked=list(range(10, 30)))
    assert Consumer._new_offset(state, TOPIC) == 20  # type: ignore[arg-type]
    assert state._acked[TOPIC] == list(range(20, 30))  # faust's bookkeeping keeps what is not committed
    assert 19 not in state._acked_index[TOPIC] and 20 in state._acked_index[TOPIC]
    state._committed_offset[TOPIC] = 20
    assert Consumer._new_offset(state, TOPIC) is None  # nothing new until 20 is saved
    handled.add(TOPIC, 20)
    assert Consumer._new_offset(state, TOPIC) == 30


def test_without_a_committed_offset_counting_starts_at_the_start_of_the_log() -> None:
    handled = Handled()
    commit_no_further_than_handled(handled)
    for offset in range(3, 8):  # 0..2 were dropped by faust before the agent saw them
        handled.add(TOPIC, offset)
    state = consumer(committed=None, acked=list(range(0, 8)))
    assert Consumer._new_offset(state, TOPIC) is None  # where the log starts is not known yet
    handled.earliest[TOPIC] = 0
    assert Consumer._new_offset(state, TOPIC) is None  # 0 was never handled: commit nothing
    handled.earliest[TOPIC] = 3  # a log whose head was deleted by retention
    assert Consumer._new_offset(state, TOPIC) == 8

