"""The join's sweeps (``stream/core/sweep.py``): what the watermark resolves, and when a resolved
id's tombstone goes. Where the state lives (memory or disk) is ``test_spill.py``'s."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.core.join import JoinBuffer, is_pair
from stream.core.slots import TOMB_JOINED
from tests.unit.core.test_spill import op, played


def test_tombstones_are_dropped_after_twice_the_ttl() -> None:
    jb = JoinBuffer(ttl_s=100, bucket_s=10)
    jb.add_prediction("r", (0.0, "p"))
    jb.add_label("r", (1.0, "l"))
    jb.expire(150.0)
    assert "r" in jb.ids
    jb.expire(205.0)
    assert "r" in jb.ids
    jb.expire(221.0)  # 2 * TTL after the prediction, rounded up to whole buckets
    assert "r" not in jb.ids


def test_a_pair_is_kept_until_its_own_deadline_and_its_tombstone_a_ttl_longer() -> None:
    jb = JoinBuffer(ttl_s=100, bucket_s=10)
    jb.add_prediction("r", (0.0, "p"))
    jb.add_label("r", (50.0, "l"))  # the pair's deadline: 150, in the bucket that ends at 160
    jb.expire(115.0)  # the prediction's bucket passed: the pair can still be revised
    assert is_pair(jb.ids["r"])
    jb.expire(161.0)
    assert jb.ids["r"] == TOMB_JOINED
    jb.expire(265.0)
    assert "r" in jb.ids
    jb.expire(271.0)  # a TTL after the pair's deadline, rounded up to whole buckets
    assert "r" not in jb.ids


def test_end_of_input_resolves_everything() -> None:
    jb = JoinBuffer(ttl_s=100)
    jb.add_prediction("p", (0.0, "p"))
    jb.add_label("l", (0.0, "l"))
    assert jb.expire(math.inf) == ([(0.0, "p")], [(0.0, "l")])
    assert not jb.ids


def test_a_watermark_that_jumps_past_both_deadlines_resolves_the_pair_as_steps_would() -> None:
    jb = JoinBuffer(ttl_s=100, bucket_s=10)
    jb.add_prediction("r", (0.0, "p"))
    jb.add_label("r", (50.0, "l"))
    jb.expire(161.0)  # the prediction's bucket and the pair's, in one sweep
    assert jb.ids["r"] == TOMB_JOINED
    jb.expire(265.0)
    assert "r" in jb.ids
    jb.expire(271.0)
    assert "r" not in jb.ids


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(ops=st.lists(op, max_size=80), entries=st.sampled_from([0, 1, 3, 8]), batch=st.sampled_from([1, 3, 10]),
       rule=st.sampled_from(["earliest", "latest"]), ttl=st.sampled_from([30, 100]))
def test_the_end_of_input_counts_what_sweeping_every_bucket_resolves(ops: list[Any], entries: int, batch: int,
                                                                    rule: str, ttl: int) -> None:
    """At an infinite watermark the counts come without reading anything back from disk."""
    swept, counted = (JoinBuffer(ttl, 20, duplicate_labels=rule, max_entries=entries) for _ in range(2))
    for join in (swept, counted):
        played(join, ops, batch, end=False)
    expired, orphaned = swept.expire(math.inf)
    assert counted.expire_counts(math.inf) == (len(expired), len(orphaned))
    assert swept.pending() == counted.pending() == (0, 0)
    assert not counted.ids and not counted.labels and counted.store is None and counted.in_memory() == 0
