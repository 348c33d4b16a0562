"""The input contract (``schemas/prediction.json``, ``schemas/label.json``): decode and validate.

Every rejection raises :class:`InvalidRecord` with a reason a person can act on; the adapters
turn it into a dead letter. Classes are compared as strings (``1``, ``"1"`` are one class;
``true`` becomes ``"true"``), so producers that mix JSON types still join cleanly.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from stream.core.errors import InvalidRecord

__all__ = [
    "MAX_ID_CHARS",
    "MAX_NAME_CHARS",
    "MAX_RAW_BYTES",
    "MAX_RECORD_BYTES",
    "MAX_SCORE_CLASSES",
    "MAX_SEGMENT_KEYS",
    "MAX_TIMESTAMP_S",
    "MIN_TIMESTAMP_S",
    "Label",
    "Prediction",
    "Scores",
    "Segment",
    "class_name",
    "decode",
    "parse_label",
    "parse_prediction",
    "parse_timestamp",
    "raw_text",
    "target_number",
]

MAX_RECORD_BYTES = 64 * 1024
MAX_RAW_BYTES = 4096  # of a refused record kept in its dead letter
MAX_ID_CHARS = 256
MAX_NAME_CHARS = 128
MAX_SEGMENT_KEYS = 16
MAX_SCORE_CLASSES = 1000
MIN_TIMESTAMP_S = 946_684_800.0  # 2000-01-01T00:00:00Z: earlier ones are a unit mix-up or a zeroed clock
MAX_TIMESTAMP_S = 253_402_300_799.0  # 9999-12-31T23:59:59Z: later ones cannot be written as RFC 3339

# RFC 3339's date-time (section 5.6), which the schemas' "date-time" format means: a "T" (or "t"),
# seconds, an optional fraction, and "Z" or an offset. Python's fromisoformat accepts far more
# (spaces, basic and week dates), so the form is checked first.
_RFC3339 = re.compile(r"\d{4}-\d\d-\d\d[Tt]\d\d:\d\d:\d\d(\.\d+)?([Zz]|[+-]\d\d:\d\d)\Z")
_RFC3339_LOCAL = re.compile(r"\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d(:\d\d(\.\d+)?)?\Z")

Segment = tuple[tuple[str, str], ...]
# (class, probability, class, probability, ...): a pending prediction holds one, and a flat tuple
# costs a third of a dict (memory per pending prediction).
Scores = tuple[str | float, ...]


@dataclass(slots=True)
class Prediction:
    request_id: str
    model: str
    model_version: str
    timestamp: float
    value: str | int | float | bool  # raw; the engine makes it a class or a number per model task
    scores: Scores | None
    segment: Segment  # sorted (key, value) pairs: one series per segment, whatever the key order


@dataclass(slots=True)
class Label:
    request_id: str
    timestamp: float
    value: str | int | float | bool


def raw_text(raw: bytes | str | None, max_bytes: int = MAX_RAW_BYTES) -> str:
    """A refused record as text for its dead letter: invalid UTF-8 replaced, and cut so that its
    JSON encoding (where a control byte takes six) stays within ``max_bytes``.

    >>> len(raw_text(bytes(4096))), len(orjson.dumps(raw_text(bytes(4096))))  # NUL bytes: \\u0000 each
    (681, 4088)
    """
    text = (raw or b"").decode("utf-8", errors="replace") if isinstance(raw, bytes | None) else raw
    text = text[:max_bytes].rstrip("\n")
    while (encoded := len(orjson.dumps(text))) > max_bytes:
        text = text[: len(text) * max_bytes // encoded - 1]
    return text


def decode(raw: bytes | str, max_bytes: int = MAX_RECORD_BYTES) -> dict[str, Any]:
    """Bytes to a JSON object, refusing oversized or non-object input."""
    if len(raw) > max_bytes:
        raise InvalidRecord(f"record is {len(raw)} bytes, over the limit of {max_bytes}")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRecord(f"not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise InvalidRecord(f"expected a JSON object, got {type(obj).__name__}")
    return obj


def _text(obj: dict[str, Any], field: str, max_chars: int, default: str | None = None) -> str:
    value = obj.get(field, default)
    if value is None:
        raise InvalidRecord(f"missing field '{field}'")
    if not isinstance(value, str):
        raise InvalidRecord(f"'{field}' must be a string, got {type(value).__name__}")
    if not value:
        raise InvalidRecord(f"'{field}' is empty")
    if len(value) > max_chars:
        raise InvalidRecord(f"'{field}' is {len(value)} characters, over the limit of {max_chars}")
    if field != "request_id" and not _printable(value):
        raise InvalidRecord(f"'{field}' {value[:64]!r} holds control characters or only spaces")
    return value


def _printable(name: str) -> bool:
    """A name people read (a model, a version, a segment): no control characters, not only spaces."""
    return name.isprintable() and not name.isspace()


def parse_timestamp(value: Any) -> float:
    """Epoch seconds (a finite number) or an RFC 3339 string with an offset, as epoch seconds."""
    if isinstance(value, bool) or value is None:
        raise InvalidRecord("'timestamp' must be epoch seconds or an RFC 3339 string")
    if isinstance(value, int | float):
        ts = float(value)
        if not math.isfinite(ts) or ts < MIN_TIMESTAMP_S or ts > MAX_TIMESTAMP_S:
            hint = " (milliseconds? send seconds)" if MAX_TIMESTAMP_S < ts < MAX_TIMESTAMP_S * 1000 else ""
            raise InvalidRecord(f"'timestamp' must be epoch seconds from 2000 to 9999 ({MIN_TIMESTAMP_S:.0f} to "
                                f"{MAX_TIMESTAMP_S:.0f}), got {value!r}{hint}")
        return ts
    if isinstance(value, str):
        if not _RFC3339.match(value):
            if _RFC3339_LOCAL.match(value):
                raise InvalidRecord(f"'timestamp' {value[:64]!r} has no UTC offset (add Z or +00:00)")
            raise InvalidRecord(f"'timestamp' {value[:64]!r} is not an RFC 3339 date-time "
                                "(e.g. 2026-11-30T06:00:00Z or 2026-11-30T07:00:00.5+01:00)")
        try:
            ts = datetime.fromisoformat(value.upper()).timestamp()
        except (ValueError, OverflowError):  # e.g. month 13, or 9999-12-31T23:59:59-23:59 (year 10000 in UTC)
            raise InvalidRecord(f"'timestamp' {value[:64]!r} is not a valid date-time in 0001 to 9999") from None
        if ts < MIN_TIMESTAMP_S or ts > MAX_TIMESTAMP_S:
            raise InvalidRecord(f"'timestamp' {value[:64]!r} is outside 2000 to 9999")
        return ts
    raise InvalidRecord(f"'timestamp' must be a number or a string, got {type(value).__name__}")


def _outcome(obj: dict[str, Any], field: str) -> str | int | float | bool:
    if field not in obj:
        raise InvalidRecord(f"missing field '{field}'")
    value = obj[field]
    if isinstance(value, str):
        if not value or len(value) > MAX_NAME_CHARS:
            raise InvalidRecord(f"'{field}' must be 1 to {MAX_NAME_CHARS} characters")
        return value
    if isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidRecord(f"'{field}' must be finite, got {value!r}")
        return value
    if value is None:
        raise InvalidRecord(f"'{field}' is null: send the record when the value is known")
    raise InvalidRecord(f"'{field}' must be a string, integer, boolean or number, got {type(value).__name__}")


def _scores(value: Any) -> Scores | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not value:
        raise InvalidRecord("'scores' must be a non-empty object of class -> probability")
    if len(value) > MAX_SCORE_CLASSES:
        raise InvalidRecord(f"'scores' has {len(value)} classes, over the limit of {MAX_SCORE_CLASSES}")
    scores: list[str | float] = []
    for cls, prob in value.items():
        if not isinstance(cls, str) or not cls:
            raise InvalidRecord(f"'scores' classes must be non-empty strings, got {str(cls)[:64]!r}")
        if isinstance(prob, bool) or not isinstance(prob, int | float) or not 0.0 <= prob <= 1.0:
            raise InvalidRecord(f"'scores'[{cls[:64]!r}] must be a probability in [0, 1], got {prob!r}")
        scores += (cls, float(prob))
    return tuple(scores)


def _segment(value: Any) -> Segment:
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise InvalidRecord(f"'segment' must be an object of string -> string, got {type(value).__name__}")
    if len(value) > MAX_SEGMENT_KEYS:
        raise InvalidRecord(f"'segment' has {len(value)} keys, over the limit of {MAX_SEGMENT_KEYS}")
    for key, val in value.items():
        if not isinstance(key, str):
            raise InvalidRecord(f"'segment' keys must be strings, got {str(key)[:64]!r}")
        if not key or not isinstance(val, str) or not val or len(key) + len(val) > 2 * MAX_NAME_CHARS:
            raise InvalidRecord(f"'segment'[{key[:64]!r}] must be a non-empty short string")
        if not (_printable(key) and _printable(val)):
            raise InvalidRecord(f"'segment'[{key[:64]!r}] holds control characters or only spaces")
    return tuple(sorted(value.items()))


def parse_prediction(obj: dict[str, Any]) -> Prediction:
    return Prediction(
        request_id=_text(obj, "request_id", MAX_ID_CHARS),
        model=_text(obj, "model", MAX_NAME_CHARS),
        model_version=_text(obj, "model_version", MAX_NAME_CHARS, "unknown"),
        timestamp=parse_timestamp(obj.get("timestamp")),
        value=_outcome(obj, "prediction"),
        scores=_scores(obj.get("scores")),
        segment=_segment(obj.get("segment")),
    )


def parse_label(obj: dict[str, Any]) -> Label:
    return Label(
        request_id=_text(obj, "request_id", MAX_ID_CHARS),
        timestamp=parse_timestamp(obj.get("timestamp")),
        value=_outcome(obj, "label"),
    )


def class_name(value: str | int | float | bool) -> str:
    """The canonical class of a prediction or label: classes are compared as strings."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if value.is_integer() and abs(value) <= 2**53:  # beyond, a JSON number is no longer one integer
        return str(int(value))
    if value.is_integer():
        raise InvalidRecord(f"{value!r} is not an exact integer class (beyond 2^53): send the class as a string")
    raise InvalidRecord(f"{value!r} is not a class; declare the model under 'regression_models'")


def target_number(value: str | int | float | bool) -> float:
    """The numeric target of a regression model's prediction or label."""
    if isinstance(value, bool | str):
        raise InvalidRecord(f"regression models need numbers, got {value!r}")
    return float(value)
