"""Records decoded as columns (``core.columns``) against the per-record bytes path (``core.wire``):
every line the columns take is the record ``prediction_from_json`` or ``label_from_json`` makes,
field types too; the others are handed back, in order, for that path to decode or refuse."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.core.columns import labels_from_json, predictions_from_json
from stream.core.errors import InvalidRecord
from stream.core.wire import label_from_json, prediction_from_json
from tests.unit.core.test_wire import records

MALFORMED = [b"", b"[]", b"null", b"{", b"\xff\xfe",
             b'{"request_id":"r","model":"m","timestamp":1e400,"prediction":"a"}',
             b'{"request_id":"r","request_id":"s","model":"m","timestamp":1.6e9,"prediction":"a","label":"b"}',
             b'{"request_id":"r","model":"m","timestamp":1.6e9,"prediction":"a","scores":{"a":0.5,"a":2}}',
             b'{"request_id":"r","model":"m","timestamp":"2026-11-30T06:00:00.5+01:00","prediction":"a","label":"b"}',
             b'{"request_id":"' + b"r" * 257 + b'","model":"m","timestamp":1.6e9,"prediction":"a","label":"b"}']


def outcome(decode: Callable[[bytes], Any], raw: bytes) -> Any:
    try:
        return decode(raw)
    except InvalidRecord:
        return None


def fields(record: Any) -> list[tuple[type, Any]]:
    return [(type(v), v) for v in (getattr(record, name) for name in record.__slots__)]


@pytest.mark.slow
@settings(max_examples=500, deadline=None)
@given(st.lists(records(), max_size=12), st.lists(st.sampled_from(MALFORMED), max_size=3), st.randoms())
def test_columns_take_what_the_per_record_path_takes(objs: list[dict[str, Any]], malformed: list[bytes],
                                                     rng: Any) -> None:
    lines = [json.dumps(obj, ensure_ascii=rng.random() < 0.5).encode(errors="surrogatepass") for obj in objs]
    lines += malformed
    rng.shuffle(lines)
    for batch, one in ((predictions_from_json, prediction_from_json), (labels_from_json, label_from_json)):
        rows = [1000 + i for i in range(len(lines))]
        columns, refused = batch(lines, rows)
        taken = [row - 1000 for row in columns.rows]
        assert sorted(taken + refused) == list(range(len(lines))) and refused == sorted(refused)
        for i, row in enumerate(taken):
            record = columns.record(i)
            assert record == one(lines[row]) and fields(record) == fields(one(lines[row])), lines[row]
        for row in refused:
            outcome(one, lines[row])  # decided there, record or reason
        keep = [rng.random() < 0.5 for _ in taken]
        kept, extra = columns.take(keep), [one(lines[row]) for row in refused if outcome(one, lines[row])]
        joined = type(columns).joined([kept, columns])
        joined.add([-1] * len(extra), extra)
        expected = [columns.record(i) for i in range(len(taken)) if keep[i]] + columns.records(
            list(range(len(taken)))) + extra  # taken, joined and added, the scores of each row its own
        assert joined.records(list(range(len(joined)))) == expected


def test_a_long_line_is_left_to_the_per_record_path() -> None:
    line = b'{"request_id":"r","model":"m","timestamp":1600000000,"prediction":"a","label":"a"}'
    for batch in (predictions_from_json, labels_from_json):
        columns, refused = batch([line, line], max_bytes=len(line) - 1)
        assert len(columns) == 0 and refused == [0, 1]
        columns, refused = batch([line, line])
        assert len(columns) == 2 and refused == []
