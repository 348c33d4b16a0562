"""Input records from their JSON bytes in one pass, for the paths that read bytes (replay's JSONL
files, the worker's topics).

msgspec decodes each line straight into a typed struct, checking JSON types in C as it goes; what
a type cannot say (lengths, names people read, the forms and range of timestamps, probabilities)
is checked here on the decoded values. A record either check refuses is handed to
:mod:`stream.core.records`, whose ``decode`` and ``parse_*`` raise the reason: so a dead letter
says the same whichever path saw the record, and an accepted record is the same
:class:`~stream.core.records.Prediction` or :class:`~stream.core.records.Label` the dict path
makes (``tests/unit/core/test_wire.py`` holds the two equal on generated hostile records).

>>> prediction_from_json(b'{"request_id":"r1","model":"fraud","timestamp":1767225600,"prediction":1}').timestamp
1767225600.0
>>> label_from_json(b'{"request_id":"r1","timestamp":"2026-01-01T00:00:00Z","label":true}')
Label(request_id='r1', timestamp=1767225600.0, value=True)
>>> label_from_json(b'{"request_id":"r1","timestamp":"2026-01-01T00:00:00","label":1}')
Traceback (most recent call last):
...
stream.core.errors.InvalidRecord: 'timestamp' '2026-01-01T00:00:00' has no UTC offset (add Z or +00:00)
"""

from __future__ import annotations

import math

import msgspec

from stream.core.errors import InvalidRecord
from stream.core.records import (
    MAX_ID_CHARS,
    MAX_NAME_CHARS,
    MAX_RECORD_BYTES,
    MAX_SCORE_CLASSES,
    MAX_SEGMENT_KEYS,
    MAX_TIMESTAMP_S,
    MIN_TIMESTAMP_S,
    Label,
    Prediction,
    decode,
    parse_label,
    parse_prediction,
    parse_timestamp,
)

__all__ = ["label_from_json", "prediction_from_json", "timestamp_from_json"]

Outcome = str | int | float | bool


_NO_SEGMENT = b"null"


class _Prediction(msgspec.Struct, gc=False):  # no cycles: the collector need not track them
    request_id: str
    model: str
    timestamp: float | str
    prediction: Outcome
    model_version: str = "unknown"
    scores: dict[str, float] | None = None
    segment: msgspec.Raw = msgspec.Raw(_NO_SEGMENT)  # its JSON text, read once per distinct text (``_segment_of``)


class _Label(msgspec.Struct, gc=False):
    request_id: str
    timestamp: float | str
    label: Outcome


class _Stamped(msgspec.Struct, gc=False):
    timestamp: float | str


SEGMENTS_KEPT = 4096  # distinct segments whose checked, sorted form is kept (a bound, whatever the input)
SEGMENT_TEXT_KEPT = 4096  # bytes of JSON text up to which a segment is kept by its text (16 MiB at most)
_SEGMENTS: dict[bytes, tuple[tuple[str, str], ...]] = {}
_SEGMENT = msgspec.json.Decoder(dict[str, str] | None)
NAMES_KEPT = 4096  # distinct model and version names kept checked (a bound, whatever the input)
_NAMES: dict[str, str] = {}
_PREDICTIONS = msgspec.json.Decoder(_Prediction)
_LABELS = msgspec.json.Decoder(_Label)
_STAMPED = msgspec.json.Decoder(_Stamped)
_DECODE_ERRORS = (msgspec.DecodeError, msgspec.ValidationError)
_INT_MIN, _INT_END = -(2**63), 2**64  # orjson reads integers beyond these as floats; msgspec keeps them exact


class _Refused(Exception):
    """A check failed: the dict path says why."""


def prediction_from_json(raw: bytes, max_bytes: int = MAX_RECORD_BYTES) -> Prediction:
    """A prediction from its JSON bytes, or :class:`InvalidRecord` with the reason."""
    if len(raw) <= max_bytes:
        try:
            rec = _PREDICTIONS.decode(raw)
            return Prediction(_request_id(rec.request_id), _name(rec.model), _name(rec.model_version),
                              _timestamp(rec.timestamp), _outcome(rec.prediction), _scores(rec.scores),
                              _segment_of(bytes(rec.segment)))
        except (_Refused, *_DECODE_ERRORS):
            pass
    return parse_prediction(decode(raw, max_bytes))


def label_from_json(raw: bytes, max_bytes: int = MAX_RECORD_BYTES) -> Label:
    """A label from its JSON bytes, or :class:`InvalidRecord` with the reason."""
    if len(raw) <= max_bytes:
        try:
            rec = _LABELS.decode(raw)
            return Label(_request_id(rec.request_id), _timestamp(rec.timestamp), _outcome(rec.label))
        except (_Refused, *_DECODE_ERRORS):
            pass
    return parse_label(decode(raw, max_bytes))


def timestamp_from_json(raw: bytes | memoryview) -> float:
    """A record's timestamp alone, as ``prediction_from_json`` or ``label_from_json`` gives it,
    the rest of its JSON skipped; :class:`InvalidRecord` where it has none they would take (the
    record's own decoder then says why)."""
    try:
        return _timestamp(_STAMPED.decode(raw).timestamp)
    except (_Refused, *_DECODE_ERRORS):
        raise InvalidRecord("no timestamp a record can have") from None


def _request_id(value: str) -> str:
    if not value or len(value) > MAX_ID_CHARS:
        raise _Refused
    return value


def _name(value: str) -> str:
    """Checked once per distinct name, and one string object for all records that carry it (a
    record waiting in a replay's sort run holds its model and version: 100 bytes less each)."""
    known = _NAMES.get(value)
    if known is not None:
        return known
    if not value or len(value) > MAX_NAME_CHARS or not value.isprintable() or value.isspace():
        raise _Refused
    if len(_NAMES) < NAMES_KEPT:
        _NAMES[value] = value
    return value


def _timestamp(value: float | str) -> float:
    if type(value) is float:
        if MIN_TIMESTAMP_S <= value <= MAX_TIMESTAMP_S:  # NaN fails too
            return value
        raise _Refused
    try:
        return parse_timestamp(value)
    except Exception:
        raise _Refused from None


def _outcome(value: Outcome) -> Outcome:
    kind = type(value)
    if kind is str:
        if not value or len(value) > MAX_NAME_CHARS:  # type: ignore[arg-type]
            raise _Refused
    elif kind is int:
        if not _INT_MIN <= value < _INT_END:  # type: ignore[operator]
            raise _Refused
    elif kind is float and not math.isfinite(value):  # type: ignore[arg-type]
        raise _Refused
    return value


def _scores(value: dict[str, float] | None) -> tuple[str | float, ...] | None:
    if value is None:
        return None
    if not value or len(value) > MAX_SCORE_CLASSES:
        raise _Refused
    flat: list[str | float] = []
    for cls, prob in value.items():
        if not cls or not 0.0 <= prob <= 1.0:
            raise _Refused
        flat += (cls, prob)
    return tuple(flat)


def _segment_of(text: bytes) -> tuple[tuple[str, str], ...]:
    """A segment from its JSON text (an object of strings, or null), checked and sorted, once per
    distinct text (``SEGMENTS_KEPT`` texts of up to ``SEGMENT_TEXT_KEPT`` bytes are kept: spaces
    may pad a valid segment's text); ``_Refused`` when it is not one a record may have."""
    known = _SEGMENTS.get(text)
    if known is not None:
        return known
    try:
        value = _SEGMENT.decode(text)
    except _DECODE_ERRORS:
        raise _Refused from None
    segment = () if value is None else _checked_segment(value)
    if len(_SEGMENTS) < SEGMENTS_KEPT and len(text) <= SEGMENT_TEXT_KEPT:
        _SEGMENTS[text] = segment
    return segment


def _checked_segment(value: dict[str, str]) -> tuple[tuple[str, str], ...]:
    if len(value) > MAX_SEGMENT_KEYS:
        raise _Refused
    items = tuple(value.items())
    for key, val in items:
        if (not key or not val or len(key) + len(val) > 2 * MAX_NAME_CHARS or not key.isprintable()
                or key.isspace() or not val.isprintable() or val.isspace()):
            raise _Refused
    return tuple(sorted(items))
