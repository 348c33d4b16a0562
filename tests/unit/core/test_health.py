"""Health counters: a batch of pairs' label lags (``Health.add_pairs``) sums to what adding each
lag's units one by one sums to, whatever the lags."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from stream.core.health import LAG_UNIT, Health, lag_units

lags = st.one_of(
    st.floats(-(2.0**40), 2.0**40, allow_nan=False),  # beyond 2**31 s: summed one by one
    st.integers(-(2**50), 2**50).map(lambda units: units / 2**23),  # differences of timestamps from 2000 on
    st.integers(-(2**33), 2**33).map(lambda units: (units + 0.5) / LAG_UNIT),  # halves: rounded to even
)


@given(st.lists(lags, max_size=40))
def test_a_batch_of_lags_sums_as_each_added_one_by_one(found: list[float]) -> None:
    health = Health()
    health.add_pairs(np.array(found, dtype=np.float64))
    assert health.label_lag_units == sum(lag_units(lag) for lag in found)
    assert health.pairs == len(found)
