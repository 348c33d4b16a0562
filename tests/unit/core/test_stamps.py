"""RFC 3339 strings read a column at a time (``core.stamps``) give what ``parse_timestamp`` gives
one by one: the same float for every string they read, and every other string left to it."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.core.errors import InvalidRecord
from stream.core.records import MAX_TIMESTAMP_S, MIN_TIMESTAMP_S, parse_timestamp
from stream.core.stamps import epoch_seconds


def one_by_one(text: str) -> float:
    try:
        return parse_timestamp(text)
    except InvalidRecord:
        return math.nan


def taken(value: float) -> float:
    """What a column keeps of a value read at once: the same range as ``parse_timestamp``'s."""
    return value if MIN_TIMESTAMP_S <= value <= MAX_TIMESTAMP_S else math.nan


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


instants = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC))
offsets = st.integers(-23 * 60 - 59, 23 * 60 + 59).map(lambda m: timezone(timedelta(minutes=m)))


@st.composite
def written(draw: st.DrawFn) -> str:
    """A valid instant as a producer writes it: ``isoformat`` with an offset or Z, its fraction cut
    to 0-6 digits, the separators in either case."""
    instant = draw(instants).astimezone(draw(offsets))
    text = instant.replace(microsecond=0).isoformat()
    digits = draw(st.integers(0, 6))
    if digits:
        text = text[:19] + "." + f"{instant.microsecond:06d}"[:digits] + text[19:]
    if draw(st.booleans()) and text.endswith("+00:00"):
        text = text[:-6] + draw(st.sampled_from(["Z", "z"]))
    if draw(st.booleans()):
        text = text[:10] + "t" + text[11:]
    return text


@st.composite
def damaged(draw: st.DrawFn) -> str:
    """A written instant with characters replaced, inserted or removed: out-of-range fields
    (month 13, second 60, February 30, offset 24:00), other separators, other digits."""
    text = list(draw(written()))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(text)))
        char = draw(st.sampled_from([*"0123456789:-+.TtZz ", "\u0663", "\x00", "\ud800", "é"]))
        action = draw(st.sampled_from(["replace", "insert", "remove"]))
        if action == "insert" or not text:
            text.insert(at, char)
        elif action == "replace":
            text[min(at, len(text) - 1)] = char
        else:
            del text[min(at, len(text) - 1)]
    return "".join(text)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(written(), damaged(), st.text(max_size=40)), max_size=30))
def test_a_column_read_at_once_gives_what_parse_timestamp_gives(texts: list[str]) -> None:
    seconds, handled = epoch_seconds(texts)
    for text, value, read in zip(texts, seconds.tolist(), handled.tolist(), strict=True):
        if read:
            assert same(taken(value), one_by_one(text)), text
        else:
            assert math.isnan(value)


@given(st.lists(written(), min_size=1, max_size=30))
def test_the_common_forms_are_read_at_once(texts: list[str]) -> None:
    seconds, handled = epoch_seconds(texts)
    for text, value, read in zip(texts, seconds.tolist(), handled.tolist(), strict=True):
        expected = datetime.fromisoformat(text.upper()).timestamp()
        if abs(expected) < 2**53 / 1e6:  # whole microseconds a float holds exactly
            assert read, text
            assert value == expected, text


@pytest.mark.parametrize("text", ["2026-02-29T00:00:00Z", "2026-13-01T00:00:00Z", "2026-01-01T24:00:00Z",
                                  "2026-01-01T00:00:60Z", "2026-01-01T00:00:00+24:00", "2026-01-01T00:00:00.Z",
                                  "2026-01-01T00:00:00.1234567Z", "2026-01-01 00:00:00Z", "0000-01-01T00:00:00Z",
                                  "2026-01-01T00:00:00", "\u0662026-01-01T00:00:00Z"])
def test_other_forms_and_fields_out_of_range_are_left_to_parse_timestamp(text: str) -> None:
    assert not epoch_seconds([text])[1][0]


def test_leap_days_and_the_edges_of_months_and_offsets() -> None:
    texts = ["2024-02-29T12:00:00Z", "2000-02-29T00:00:00-23:59", "1900-03-01T00:00:00+23:59",
             "2026-12-31T23:59:59.999999+00:00", "1970-01-01T00:00:00Z", "1969-12-31T23:59:59.5Z"]
    seconds, handled = epoch_seconds(texts)
    assert handled.all()
    assert seconds.tolist() == [datetime.fromisoformat(t.upper()).timestamp() for t in texts]
