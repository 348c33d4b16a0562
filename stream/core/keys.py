"""One encoding for every key built from a series (model, version, segment) and a window.

Record keys, table keys, Prometheus label values and alert fingerprints all come from here, and
each encoding is unambiguous whatever the names hold: model ``"hc|x"`` version ``"y"`` and model
``"hc"`` version ``"x|y"`` are two series, never one.

>>> segment_label({"venue": "home", "country": "DE"})
'country=DE,venue=home'
>>> segment_label({"a": "1,b=2"}) != segment_label({"a": "1", "b": "2"})
True
>>> record_key({"model": "hc|x", "model_version": "y", "segment": {}, "window": {"name": "tumbling_1h", "start": 0}})
'["hc|x","y",[],"tumbling_1h",0]'
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

__all__ = ["fingerprint", "record_key", "segment_label"]

_ESCAPES = str.maketrans({"\\": "\\\\", ",": "\\,", "=": "\\="})


def segment_label(segment: Mapping[str, str] | Iterable[tuple[str, str]]) -> str:
    """``key=value`` pairs in key order, comma-separated, with ``\\``, ``,`` and ``=`` escaped by a
    backslash: readable as a Prometheus label value or in a rule's ``segments`` glob, and never
    the same for two segments. ``""`` is the model overall."""
    items = segment.items() if isinstance(segment, Mapping) else segment
    return ",".join(f"{k.translate(_ESCAPES)}={v.translate(_ESCAPES)}" for k, v in sorted(items))


def record_key(record: Mapping[str, Any]) -> str:
    """The upsert key of a metric record (or a partial): one per (model, version, segment, window
    instance), as a JSON array."""
    window = record["window"]
    segment = sorted(record["segment"].items())
    key = [record["model"], record["model_version"], segment, window["name"], window.get("start", 0)]
    return orjson.dumps(key).decode()


def fingerprint(labels: Mapping[str, str]) -> str:
    """Stable for one rule and label set, as Alertmanager identifies an alert."""
    return hashlib.sha256(orjson.dumps(sorted(labels.items()))).hexdigest()[:16]
