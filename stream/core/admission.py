"""Which names get series of their own: models, versions per model, segment keys per model and
values per key, each within a limit, and idle ones ageing out so new ones are admitted again.

Every figure mlmon publishes (metric records, Prometheus series, alert states) is per (model,
version, segment, window), so these limits bound what it publishes (``Limits.max_series``). A
model beyond ``max_models`` is refused; a version, segment key or value beyond its limit is folded
into ``__other__`` (its pairs still count, under that name). A name unseen for ``series_ttl_s``
of event time gives its slot up when a new name needs one.

>>> admission = Admission(Limits(max_models=1, max_versions_per_model=1, max_segment_keys=1,
...                              max_segment_values=1, series_ttl_s=100))
>>> admission.model("fraud", 0.0), admission.model("churn", 0.0)
(True, False)
>>> admission.version("fraud", "v1", 0.0), admission.version("fraud", "v2", 0.0)
('v1', '__other__')
>>> admission.segment("fraud", "country", "DE", 0.0), admission.segment("fraud", "country", "FR", 0.0)
(('country', 'DE'), ('country', '__other__'))
>>> admission.segment("fraud", "device", "ios", 0.0)
('__other__', '__other__')
>>> admission.model("churn", 150.0), admission.evicted  # fraud was idle for longer than series_ttl_s
(True, ['fraud'])
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from stream.core.windows import SWEEP_EVERY_S, final_at

__all__ = ["NOTE_EVERY_S", "OTHER", "Admission", "Limits", "Refusals", "Slots"]

OTHER = "__other__"
NOTE_EVERY_S = 3600.0  # event time between two dead letters for one refused name


@dataclass(frozen=True)
class Limits:
    max_models: int = 100
    max_versions_per_model: int = 10
    max_segment_keys: int = 10
    max_segment_values: int = 50
    series_ttl_s: float = 7 * 86400.0

    @classmethod
    def of(cls, config: Any, factor: int = 1) -> Limits:
        """A configuration's limits, each ``factor`` times as large. A name is forgotten no sooner
        than a sweep after the last window it can be in is final (``core.windows.final_at``: of a
        window as long as the longest, from when it was last seen): by then no prediction of it is
        pending."""
        longest = max((w.size_s or 0 for w in config.windows), default=0)
        ttl_s = max(config.series_ttl_s, final_at(longest, config.join_ttl_s) + SWEEP_EVERY_S)
        return cls(config.max_models * factor, config.max_versions_per_model * factor,
                   config.max_segment_keys * factor, config.max_segment_values * factor, ttl_s)

    def max_series(self) -> int:
        """The most series (model, version, segment) there can be at once: per model and version,
        the model overall, each admitted key's values and ``__other__``, and the folded keys."""
        segments = 1 + self.max_segment_keys * (self.max_segment_values + 1) + 1
        return self.max_models * (self.max_versions_per_model + 1) * segments


class Slots:
    """At most ``limit`` names, each with the latest time it was seen; when full, names idle for
    longer than ``ttl_s`` give their slot up to a new one."""

    __slots__ = ("expires", "limit", "seen", "ttl_s")

    def __init__(self, limit: int, ttl_s: float) -> None:
        self.limit = limit
        self.ttl_s = ttl_s
        self.seen: dict[str, float] = {}
        self.expires = math.inf  # the earliest time a name may go idle (no scan before)

    def restore(self, seen: dict[str, float]) -> None:
        """Names and when each was last seen, as stored."""
        self.seen.update(seen)
        self.expires = min(self.seen.values(), default=math.inf) + self.ttl_s

    def admit(self, name: str, ts: float, evicted: list[str] | None = None) -> bool:
        seen = self.seen
        last = seen.get(name)
        if last is not None:
            if ts > last:
                seen[name] = ts
            return True
        if len(seen) >= self.limit and ts >= self.expires:
            idle = [n for n, t in seen.items() if t + self.ttl_s <= ts]
            for gone in idle:
                del seen[gone]
            if evicted is not None:
                evicted.extend(idle)
            self.expires = min(seen.values(), default=math.inf) + self.ttl_s
        if len(seen) >= self.limit:
            return False
        seen[name] = ts
        self.expires = min(self.expires, ts + self.ttl_s)
        return True


@dataclass
class _Model:
    versions: Slots
    keys: Slots
    values: dict[str, Slots] = field(default_factory=dict)


class Admission:
    """The limits of one place that sees every record of the models it decides on (an engine in
    replay, the merger partition a model's partials go to in the worker)."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.models = Slots(limits.max_models, limits.series_ttl_s)
        self._models: dict[str, _Model] = {}
        self.evicted: list[str] = []  # models that gave their slot up, for the caller to forget

    def model(self, name: str, ts: float) -> bool:
        """Whether model ``name`` is (or now becomes) one of those monitored."""
        if not self.models.admit(name, ts, self.evicted):
            return False
        for gone in self.evicted:
            self._models.pop(gone, None)
        if name not in self._models:
            limits = self.limits
            self._models[name] = _Model(Slots(limits.max_versions_per_model, limits.series_ttl_s),
                                        Slots(limits.max_segment_keys, limits.series_ttl_s))
        return True

    def version(self, model: str, version: str, ts: float) -> str:
        """The version's own name, or ``__other__`` (of an admitted model)."""
        return version if self._models[model].versions.admit(version, ts) else OTHER

    def segment(self, model: str, key: str, value: str, ts: float) -> tuple[str, str]:
        """The segment's (key, value), with what is beyond the limits folded into ``__other__``."""
        slots = self._models[model]
        if not slots.keys.admit(key, ts):
            return OTHER, OTHER
        values = slots.values.get(key)
        if values is None:
            values = slots.values[key] = Slots(self.limits.max_segment_values, self.limits.series_ttl_s)
        return (key, value) if values.admit(value, ts) else (key, OTHER)

    def forget(self, model: str) -> None:
        """Drop a model and its names (its slot, if it had one, is free)."""
        self._models.pop(model, None)
        self.models.seen.pop(model, None)

    def export(self, model: str) -> dict[str, Any]:
        """A model's admitted names and when each was last seen, to store."""
        slots = self._models[model]
        return {"versions": dict(slots.versions.seen), "keys": dict(slots.keys.seen),
                "values": {k: dict(v.seen) for k, v in slots.values.items()}}

    def restore(self, model: str, stored: dict[str, Any]) -> None:
        """Admit a model with the names ``export`` gave, as they were."""
        self.model(model, -math.inf)
        slots = self._models[model]
        slots.versions.restore(stored["versions"])
        slots.keys.restore(stored["keys"])
        for key, values in stored["values"].items():
            slots.values[key] = Slots(self.limits.max_segment_values, self.limits.series_ttl_s)
            slots.values[key].restore(values)

    def size(self, model: str) -> int:
        """How many names a model holds: changes when one comes or goes."""
        slots = self._models[model]
        return len(slots.versions.seen) + len(slots.keys.seen) + sum(len(v.seen) for v in slots.values.values())

    def names(self) -> set[tuple[str, ...]]:
        """Every admitted name: ("model", m), ("version", m, v), ("key", m, k), ("value", m, k, v)."""
        out: set[tuple[str, ...]] = {("model", m) for m in self.models.seen}
        for model, slots in self._models.items():
            out.update(("version", model, v) for v in slots.versions.seen)
            out.update(("key", model, k) for k in slots.keys.seen)
            for key, values in slots.values.items():
                out.update(("value", model, key, v) for v in values.seen)
        return out

    def drain_evicted(self) -> list[str]:
        evicted, self.evicted = self.evicted, []
        return evicted


class Refusals:
    """When a refused name is said so again (a dead letter): once per ``NOTE_EVERY_S`` of event
    time, not once per record; remembers a bounded number of names.

    >>> refusals = Refusals(limit=100)
    >>> refusals.due("flood", 0.0), refusals.due("flood", 60.0), refusals.due("flood", 3600.0)
    (True, False, True)
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.noted: dict[str, float] = {}

    def due(self, name: str, ts: float) -> bool:
        noted = self.noted.get(name)
        if noted is not None and ts - noted < NOTE_EVERY_S:
            return False
        if len(self.noted) >= self.limit:
            self.noted = {n: t for n, t in self.noted.items() if ts - t < NOTE_EVERY_S}
            if len(self.noted) >= self.limit:
                self.noted.clear()  # a flood of names within the hour: each may be said again
        self.noted[name] = ts
        return True
