"""``unique_ints`` answers as ``np.unique`` does, and the settled path's codings built on it
(``_paired``, ``_distinct``, ``_first_come``, ``ticks``) as their sorting forms do."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.config import Config
from stream.core import settled
from stream.core.codes import unique_ints
from stream.core.engine import Engine
from stream.core.windows import SWEEP_EVERY_S

INTS = st.lists(st.one_of(st.integers(0, 50), st.integers(0, 10**6), st.integers(-5, 5)), max_size=60)


@given(values=INTS)
@settings(max_examples=400, deadline=None)
def test_unique_ints_is_np_unique(values: list[int]) -> None:
    a = np.array(values, dtype=np.int64)
    found, first, inverse = np.unique(a, return_index=True, return_inverse=True)
    for index in (False, True):
        for back in (False, True):
            got = unique_ints(a, return_index=index, return_inverse=back)
            want = [found, *([first] if index else []), *([inverse.reshape(-1)] if back else [])]
            got = [got] if not (index or back) else list(got)
            assert [g.tolist() for g in got] == [w.tolist() for w in want]
            assert all(g.dtype == np.int64 for g in got)


CODES = st.lists(st.tuples(st.integers(0, 40), st.integers(0, 3000)), max_size=50)


@given(pairs=CODES)
@settings(max_examples=300, deadline=None)
def test_pairs_coded_as_by_sorting(pairs: list[tuple[int, int]]) -> None:
    a = np.array([p[0] for p in pairs], dtype=np.int64)
    b = np.array([p[1] for p in pairs], dtype=np.int64)
    width = int(b.max(initial=0)) + 1
    assert settled._paired(a, b).tolist() == np.unique(a * width + b, return_inverse=True)[1].reshape(-1).tolist()
    assert settled._distinct(a, b) == [divmod(k, width) for k in np.unique(a * width + b).tolist()]
    rows = np.arange(0, len(pairs), 2)
    assert settled._distinct(a, b, rows) == sorted(set(zip(a[rows].tolist(), b[rows].tolist(), strict=True)))
    group, first = settled._first_come(b)
    order = list(dict.fromkeys(b.tolist()))  # distinct values in the order they first come
    assert group.tolist() == [order.index(v) for v in b.tolist()]
    assert first.tolist() == [b.tolist().index(v) for v in order]


def _ticks_by_sorting(timestamps: np.ndarray, lag_s: float) -> list[float]:
    """The first time of each sweep interval, and the last, from the sorted distinct times."""
    ts = np.unique(timestamps)
    sweep = (ts - lag_s) // SWEEP_EVERY_S
    new = np.ones(len(ts), dtype=bool)
    new[1:] = sweep[1:] != sweep[:-1]
    new[-1] = True
    return ts[new].tolist()  # type: ignore[no-any-return]


@given(times=st.lists(st.floats(1.7e9, 1.7e9 + 86400.0), min_size=1, max_size=40),
       far=st.lists(st.floats(1.0e9, 9.0e9), max_size=3), lag=st.sampled_from([1, 5, 59, 3600]))
@settings(max_examples=300, deadline=None)
def test_ticks_as_by_sorting(times: list[float], far: list[float], lag: int) -> None:
    """With times close together (counted by a table) or spread over centuries (sorted)."""
    engine = Engine(Config.from_mapping({"watermark_lag_s": lag}))
    for chosen in (times, times + far):
        timestamps = np.array(chosen)
        assert engine.ticks(timestamps) == _ticks_by_sorting(timestamps, float(lag))
