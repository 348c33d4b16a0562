"""Broken producer clocks in a backtest (``core.clock.judge_in_time_order``): a record refused is
one alone in the future, more than ``max_future_s`` after the record before it and before the one
after it (or last); every record comes out once, in order."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from stream.core.clock import future_reason, judge_in_time_order


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(0, 1e6), max_size=40).map(sorted), st.sampled_from([0.0, 1.0, 100.0, 3600.0]))
def test_a_record_alone_in_the_future_is_refused_and_no_other(stamps: list[float], max_future_s: float) -> None:
    judged = list(judge_in_time_order(list(enumerate(stamps)), lambda item: item[1], max_future_s))
    assert [item for item, _ in judged] == list(enumerate(stamps))
    for (i, ts), reason in judged:
        alone = (max_future_s > 0 and i > 0 and ts - stamps[i - 1] > max_future_s
                 and (i == len(stamps) - 1 or stamps[i + 1] - ts > max_future_s))
        assert (reason is not None) == alone, (i, stamps, reason)
        if alone:
            assert reason == future_reason(ts, stamps[i - 1], max_future_s, "the record before it")


def test_no_limit_refuses_nothing() -> None:
    assert future_reason(1e12, 0.0, 0, "the worker's clock") is None
    assert [reason for _, reason in judge_in_time_order([0.0, 1e9], float, 0)] == [None, None]
