"""Event-time window specs and assignment, aligned to the epoch (start = floor(ts / size) * size).

>>> spec = WindowSpec.parse({"kind": "hopping", "size": "1h", "hop": "30m"})
>>> spec.name, spec.starts(5000.0)
('hopping_1h_30m', [3600, 1800])
>>> WindowSpec.parse("tumbling 1d").starts(90000.0)
[86400]
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from stream.core.errors import ConfigError

__all__ = ["KINDS", "SWEEP_EVERY_S", "WindowSpec", "counting_window", "final_at", "format_duration",
           "parse_duration_s"]

KINDS = ("tumbling", "hopping", "rolling", "cumulative")
SWEEP_EVERY_S = 60.0  # event time between the engine's sweeps (expiry, windows made final): its join's buckets
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$")


def final_at(end: float | None, ttl_s: float) -> float:
    """The watermark from which a window that ends at ``end`` (None: never) is final, the one rule
    that every part asks (the engine, the worker's merger, what it keeps for a rebuild): its end,
    plus the TTL (a label may pair with a prediction inside it until then), plus one sweep (the
    engine judges expiry a sweep at a time).

    >>> final_at(3600.0, 86400.0), final_at(None, 60.0)
    (90060.0, inf)
    """
    return math.inf if end is None else end + ttl_s + SWEEP_EVERY_S


def parse_duration_s(value: Any) -> int:
    """'90s', '15m', '1h', '1d', '2w' or a number of seconds, as whole seconds (> 0)."""
    if isinstance(value, bool):
        raise ConfigError(f"duration {value!r} is not a number of seconds or e.g. '1h'")
    if isinstance(value, int | float) and value > 0 and float(value).is_integer():
        return int(value)
    match = _DURATION.match(str(value))
    if not match or int(match.group(1)) <= 0:
        raise ConfigError(f"duration {value!r} is not a positive whole number of seconds or e.g. '15m', '1h'")
    return int(match.group(1)) * _UNITS[match.group(2) or "s"]


def format_duration(seconds: int) -> str:
    for unit in ("w", "d", "h", "m"):
        if seconds % _UNITS[unit] == 0:
            return f"{seconds // _UNITS[unit]}{unit}"
    return f"{seconds}s"


@dataclass(frozen=True, slots=True)
class WindowSpec:
    kind: str
    size_s: int = 0
    hop_s: int = 0
    size_n: int = 0

    @property
    def name(self) -> str:
        """The label value used in metric records, Prometheus series and alert rules."""
        if self.kind == "tumbling":
            return f"tumbling_{format_duration(self.size_s)}"
        if self.kind == "hopping":
            return f"hopping_{format_duration(self.size_s)}_{format_duration(self.hop_s)}"
        if self.kind == "rolling":
            return f"rolling_{self.size_n}"
        return "cumulative"

    @property
    def timed(self) -> bool:
        """Whether windows are assigned by timestamp (rolling ones follow pair order instead)."""
        return self.kind != "rolling"

    def starts(self, ts: float) -> list[int]:
        """Start times of every window of this spec that contains event time ``ts``."""
        if self.kind == "tumbling":
            return [int(ts // self.size_s) * self.size_s]
        if self.kind == "hopping":
            last = int(ts // self.hop_s) * self.hop_s
            return list(range(last, int(ts) - self.size_s, -self.hop_s))
        return [0]

    def end(self, start: int) -> int | None:
        return start + self.size_s if self.size_s else None

    def describe(self, start: int) -> dict[str, Any]:
        """The ``window`` object of a metric record."""
        out: dict[str, Any] = {"kind": self.kind, "name": self.name}
        if self.size_s:
            out["size_s"] = self.size_s
            out["start"] = start
            out["end"] = start + self.size_s
        if self.hop_s:
            out["hop_s"] = self.hop_s
        if self.size_n:
            out["size_n"] = self.size_n
        return out

    @classmethod
    def parse(cls, value: Any) -> WindowSpec:
        """From a mapping (``{kind, size, hop, size_n}``) or shorthand ('tumbling 1h', 'rolling 1000')."""
        if isinstance(value, str):
            words = value.split()
            value = {"kind": words[0], **({"size": words[1]} if len(words) > 1 else {})}
            if value["kind"] == "rolling" and "size" in value:
                value["size_n"] = value.pop("size")
        if not isinstance(value, dict) or value.get("kind") not in KINDS:
            raise ConfigError(f"window {value!r}: 'kind' must be one of {', '.join(KINDS)}")
        kind = value["kind"]
        if kind == "cumulative":
            return cls("cumulative")
        if kind == "rolling":
            size_n = value.get("size_n")
            if isinstance(size_n, str) and size_n.isdigit():
                size_n = int(size_n)
            if not isinstance(size_n, int) or isinstance(size_n, bool) or size_n <= 0:
                raise ConfigError(f"rolling window needs 'size_n', a positive number of pairs, got {size_n!r}")
            return cls("rolling", size_n=size_n)
        size_s = parse_duration_s(value.get("size", value.get("size_s")))
        if kind == "tumbling":
            return cls("tumbling", size_s=size_s)
        hop_s = parse_duration_s(value.get("hop", value.get("hop_s")))
        if hop_s > size_s or size_s % hop_s:
            raise ConfigError(f"hopping window: hop {hop_s}s must divide size {size_s}s")
        return cls("hopping", size_s=size_s, hop_s=hop_s)


def counting_window(windows: list[WindowSpec]) -> WindowSpec | None:
    """The configured window whose instances split the pairs, each pair in exactly one: the
    smallest tumbling window, else the cumulative one; None when only hopping and rolling windows
    are configured (a pair is in several hopping windows, and a rolling one lets pairs go). What
    adds every pair once, such as Prometheus's confusion counters, follows its records.

    >>> counting_window([WindowSpec("hopping", 3600, 600), WindowSpec("tumbling", 86400), WindowSpec("cumulative")])
    WindowSpec(kind='tumbling', size_s=86400, hop_s=0, size_n=0)
    >>> counting_window([WindowSpec("rolling", size_n=100)]) is None
    True
    """
    tumbling = [w for w in windows if w.kind == "tumbling"]
    if tumbling:
        return min(tumbling, key=lambda w: w.size_s)
    return next((w for w in windows if w.kind == "cumulative"), None)
