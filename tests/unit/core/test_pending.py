"""Pending predictions packed into bytes (``core.pending``) come back as they went in: timestamp,
window-set number, class id or target, score names and probabilities, past the layouts an engine
keeps too (then the names come inline)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from stream.core.pending import INLINE_SCORES, MAX_LAYOUTS, PendingCodec, pending_ts

timestamps = st.floats(946_684_800.0, 253_402_300_799.0)
numbers = st.integers(0, 2**32 - 1)
names = st.lists(st.text(min_size=1, max_size=6), min_size=1, max_size=4, unique=True).map(tuple)
probabilities = st.floats(0.0, 1.0)


@st.composite
def prediction(draw: st.DrawFn) -> tuple[Any, ...]:
    """(ts, number, regression, value, flat scores or None)."""
    ts, number = draw(timestamps), draw(numbers)
    kind = draw(st.sampled_from(["regression", "unscored", "scored"]))
    if kind == "regression":
        return ts, number, True, draw(st.floats(allow_nan=False, allow_infinity=False)), None
    guess = draw(st.integers(0, 2**16 - 1))
    if kind == "unscored":
        return ts, number, False, guess, None
    classes = draw(names)
    flat = tuple(x for name in classes for x in (name, draw(probabilities)))
    return ts, number, False, guess, flat


@settings(max_examples=200, deadline=None)
@given(st.lists(prediction(), max_size=30), st.integers(0, MAX_LAYOUTS))
def test_what_is_packed_unpacks_as_it_was(predictions: list[tuple[Any, ...]], layouts_before: int) -> None:
    codec = PendingCodec()
    for k in range(layouts_before):  # layouts an engine met before: the next ones may come inline
        codec.pack(0.0, 0, False, 0, (f"class-{k}", 0.5))
    for ts, number, regression, value, scores in predictions:
        entry = codec.pack(ts, number, regression, value, scores)
        assert pending_ts(entry) == ts
        got_ts, got_number, got_value, got_names, got_probs = codec.unpack(entry)
        assert (got_ts, got_number, got_value) == (ts, number, value)
        assert got_names == (None if scores is None else scores[0::2])
        assert got_probs == (() if scores is None else scores[1::2])
        head = codec.unpack_heads([entry])[0]
        assert (float(head["ts"]), int(head["number"])) == (ts, number)
        if scores is not None and head["layout"] != INLINE_SCORES:
            assert codec.layout(int(head["layout"])) == scores[0::2]
            assert codec.probabilities([entry], len(scores) // 2)[0].tolist() == list(scores[1::2])
