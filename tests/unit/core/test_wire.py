"""The bytes path (``core.wire``, msgspec) against the dict path (``core.records``, the reference):
on any record, hostile ones too, the same record or the same reason."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from stream.core import wire
from stream.core.records import MAX_RECORD_BYTES, decode, parse_label, parse_prediction
from stream.core.wire import label_from_json, prediction_from_json, timestamp_from_json
from stream.errors import InvalidRecord
from tests.unit.core.test_records import BAD_PREDICTIONS, GOOD_PREDICTIONS


def outcome(parse: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return "ok", parse()
    except InvalidRecord as exc:
        return "refused", str(exc)


def same(raw: bytes) -> None:
    for fast, slow in ((prediction_from_json, parse_prediction), (label_from_json, parse_label)):
        expected = outcome(lambda: slow(decode(raw)))  # noqa: B023 - called at once
        got = outcome(lambda: fast(raw))  # noqa: B023
        assert got == expected, raw
        if got[0] == "ok":
            assert [type(v) for v in vars_of(got[1])] == [type(v) for v in vars_of(expected[1])], raw
            stamp = outcome(lambda: timestamp_from_json(raw))
            assert stamp == ("ok", got[1].timestamp), raw  # the timestamp alone, as the whole record has it


def vars_of(record: Any) -> list[Any]:
    return [getattr(record, name) for name in record.__slots__]


SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=946_684_800, max_value=2_000_000_000),
    st.floats(allow_nan=False, allow_infinity=False), st.floats(min_value=0, max_value=1),
    st.floats(min_value=946_684_800, max_value=253_402_300_799.0),
    st.text(max_size=6),
    st.sampled_from(["", " ", "a\x00", "m" * 129, "r" * 257, "\t", "é", "2026-11-30T06:00:00Z", "2026-11-30t06:00:00z",
                     "2026-11-30T06:00:00.25+01:00", "2026-11-30T06:00:00", "9999-12-31T23:59:59-23:59",
                     "2026-13-30T06:00:00Z", "1999-12-31T23:59:59Z"]),
)
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.one_of(st.text(max_size=4), st.sampled_from(["", " ", "\n"])),
                                                 inner, max_size=4)), max_leaves=8)
FIELDS = ["request_id", "model", "model_version", "timestamp", "prediction", "label", "scores", "segment", "x"]


@st.composite
def records(draw: st.DrawFn) -> dict[str, Any]:
    base = draw(st.sampled_from([*GOOD_PREDICTIONS, *(r for r, _ in BAD_PREDICTIONS),
                                 {"request_id": "r", "timestamp": 1.6e9, "label": "a"}]))
    obj = dict(base)
    if draw(st.booleans()):  # scores and segments of the right shape, at their limits
        names = st.one_of(st.sampled_from(["", " ", "a", "\n", "k" * 128, "k" * 129]), st.text(max_size=3))
        obj["scores"] = draw(st.dictionaries(names, st.one_of(st.floats(0, 1), st.integers(0, 1), st.booleans()),
                                             max_size=3))
        obj["segment"] = draw(st.dictionaries(names, names, max_size=3))
    for field in draw(st.lists(st.sampled_from(FIELDS), max_size=3)):
        if draw(st.booleans()):
            obj[field] = draw(VALUES)
        else:
            obj.pop(field, None)
    return obj


@pytest.mark.slow
@settings(max_examples=3000, deadline=None)
@given(records())
@example({"request_id": "r", "model": "m", "timestamp": 1.6e9, "prediction": 2**64})
@example({"request_id": "r", "model": "m", "timestamp": 1.6e9, "prediction": -(2**63) - 1})
@example({"request_id": "r", "model": "m", "timestamp": 1.6e9, "prediction": 1, "scores": {"a": True}})
@example({"request_id": "r", "model": "m", "timestamp": 1.6e9, "prediction": 1, "scores": {}})
@example({"request_id": "r", "model": "m", "timestamp": 1.6e9, "prediction": 1, "segment": {}})
@example({"request_id": "r", "model": "m", "timestamp": True, "prediction": 1})
@example({"request_id": "r", "model": "m", "timestamp": 1.6e9, "prediction": 1, "segment": {"k" * 128: "v" * 129}})
@example({"request_id": "r", "model": "m", "timestamp": 1.6e9, "prediction": 1, "segment": {"k" * 128: "v" * 128}})
@example({"request_id": "r", "model": "m", "timestamp": 1.6e9, "prediction": 1, "scores": {"": 0.5}})
@example({"request_id": "r", "model": "m", "model_version": None, "timestamp": 1.6e9, "prediction": 1})
def test_the_bytes_path_equals_the_dict_path(obj: dict[str, Any]) -> None:
    same(json.dumps(obj).encode())  # the standard library writes integers of any size
    same(json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode(errors="surrogatepass"))


@pytest.mark.parametrize("raw", [
    b"", b"[]", b"null", b"{", b"\xff\xfe", b'{"request_id":"r","request_id":"s","model":"m","timestamp":1.6e9,'
    b'"prediction":"a","label":"b"}', b'{"request_id":"r","model":"m","timestamp":1e400,"prediction":"a"}',
    b'{"request_id":"r","model":"m","timestamp":1.6e9,"prediction":99999999999999999999999,"label":1e400}',
    b'{"request_id":"r","model":"m","timestamp":NaN,"prediction":"a"}',
    b' {"request_id":"r","model":"m","timestamp":1600000000,"prediction":"a","label":"a"}\n',
    b'{"request_id":"r","model":"m","timestamp":1.6e9,"prediction":"a","scores":{"a":0.5,"a":2}}',
    b'{"request_id":"r","model":"m","timestamp":1.6e9,"prediction":"a","label":"a","pad":"' + b"x" * MAX_RECORD_BYTES
    + b'"}',
])
def test_malformed_bytes_get_the_same_reason(raw: bytes) -> None:
    same(raw)


@pytest.mark.parametrize("segment", [b"null", b"{}", b'{"k":"v"}', b' { "k" : "v" } ', b'{"k":"v","k":"w"}',
                                     b'{"b":"1","a":"2"}', b'{"k":5}', b'"k"', b"[]", b'{"k":"\\u00e9"}',
                                     b'{"k":"\\ud800"}', b'{"":"v"}'])
def test_a_segment_read_from_its_text_is_the_dict_paths(segment: bytes) -> None:
    """Segments are read once per distinct JSON text: however written (spaces, key order, a key
    twice, escapes, null, not an object), the record or the reason is the dict path's."""
    same(b'{"request_id":"r","model":"m","timestamp":1.6e9,"prediction":1,"segment":' + segment + b"}")
    same(b'{"request_id":"r","model":"m","timestamp":1.6e9,"prediction":1,"segment":' + segment + b',"label":1}')


def test_a_segment_padded_past_the_kept_length_is_read_and_not_kept() -> None:
    """A valid segment's text may be padded with any number of spaces: it is read each time rather
    than kept, so that the texts kept stay bounded (``SEGMENT_TEXT_KEPT``)."""
    text = b'{"k": "v"' + b" " * wire.SEGMENT_TEXT_KEPT + b"}"
    raw = b'{"request_id":"r","model":"m","timestamp":1.6e9,"prediction":1,"segment":' + text + b"}"
    assert prediction_from_json(raw, 1 << 20).segment == (("k", "v"),)
    assert text not in wire._SEGMENTS
