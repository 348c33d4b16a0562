"""Where a record goes: its model (admitted within the limits), its class ids, its window set,
series and windows. :class:`stream.core.engine.Engine` is a ``Placement``; the engine holds the
state."""

from __future__ import annotations

import heapq
import itertools
import math
from typing import Any

from stream.core.admission import OTHER, Admission, Refusals
from stream.core.confusion import ClassIndex
from stream.core.detector_book import DetectorBook
from stream.core.errors import InvalidRecord
from stream.core.health import Health
from stream.core.join import JoinBuffer
from stream.core.pending import PendingCodec, PendingPrediction
from stream.core.records import class_name
from stream.core.series import Model, RollingWindow, Series, Window, WindowSet
from stream.core.settings import Settings
from stream.core.windows import WindowSpec, final_at

__all__ = ["Placement"]


class Placement:
    """The engine's routing of records to models, series and windows."""

    config: Settings
    models: dict[str, Model]
    health: Health
    join: JoinBuffer
    admission: Admission
    detectors: DetectorBook
    specs: list[WindowSpec]
    rolling_specs: list[WindowSpec]
    _refusals: Refusals
    _model_numbers: itertools.count[int]
    _series: dict[tuple[str, str, tuple[tuple[str, str], ...]], Series]
    _sets: dict[tuple[str, str, Any, int], WindowSet]
    _numbered: dict[int, WindowSet]
    _set_slots: list[tuple[int, tuple[str, str, Any, int]]]
    _set_numbers: itertools.count[int]
    _stale_after_s: float
    _codec: PendingCodec
    _final_heap: list[tuple[float, int, Window]]
    _seq: itertools.count[int]

    def _model(self, name: str, ts: float) -> Model | None:
        """The model, admitted now if there is room (see core.admission); a refused one raises
        with the reason once an hour of event time, else gives None."""
        model = self.models.get(name)
        if model is None:
            admission = self.admission
            if not admission.model(name, ts):
                self.health.refused_models += 1
                if not self._refusals.due(name, ts):
                    return None
                raise InvalidRecord(
                    f"model '{name[:64]}' refused: already monitoring {admission.limits.max_models} models, none "
                    f"idle for series_ttl (raise max_models); its other records within the next hour are "
                    "refused without a dead letter (counted in refused_models)")
            for gone in admission.drain_evicted():
                self._forget(gone)
            regression = self.config.is_regression(name)
            model = self.models[name] = Model(name, regression, None if regression else ClassIndex(),
                                              number=next(self._model_numbers))
            self.join.several = self.join.several or model.number > 0
        return model

    def _forget(self, name: str) -> None:
        """A model idle for ``series_ttl``: its windows are final, none of its predictions pend."""
        self.models.pop(name, None)
        self._series = {k: s for k, s in self._series.items() if k[0] != name}
        self._sets = {k: s for k, s in self._sets.items() if k[0] != name}
        self._numbered = {s.number: s for s in self._sets.values()}

    def _class_id(self, model: Model, value: Any) -> int:
        classes = model.classes
        assert classes is not None
        name = class_name(value)
        found = classes.ids.get(name)
        if found is not None:
            return found
        if len(classes) >= self.config.max_classes:
            self.health.folded_classes += 1
            name = OTHER
        return classes.id(name)

    def _window_set(
        self, model: Model, version: str, segment: tuple[tuple[str, str], ...], slot: int, ts: float
    ) -> WindowSet:
        admission = self.admission
        admission.model(model.name, ts)  # seen now: its slot is kept
        named = admission.version(model.name, version, ts)
        if named is OTHER:
            self.health.folded_versions += 1
        parts: list[tuple[tuple[str, str], ...]] = [()]
        for key, value in segment:
            folded = admission.segment(model.name, key, value, ts)
            if folded[1] is OTHER:
                self.health.folded_segments += 1
            parts.append((folded,))
        group = tuple(self._series_of(model, named, part) for part in parts)
        windows = [self._window(series, spec, start, model) for series in group for spec in self.specs
                   for start in spec.starts(ts)]
        number = next(self._set_numbers) & 0xFFFFFFFF
        ends = [end for spec in self.specs for start in spec.starts(ts) if (end := spec.end(start)) is not None]
        wset = WindowSet(model, group, tuple(windows), number, min(ends, default=math.inf) + self._stale_after_s)
        place = (model.name, version, segment, slot)
        self._sets[place] = self._numbered[number] = wset
        heapq.heappush(self._set_slots, (slot, place))
        return wset

    def _unpack(self, entry: PendingPrediction) -> tuple[float, WindowSet, Any, tuple[Any, ...] | None,
                                                          tuple[float, ...]]:
        """(timestamp, window set, guess, score names or None, probabilities)."""
        ts, number, guess, names, probs = self._codec.unpack(entry)
        return ts, self._numbered[number], guess, names, probs

    def _series_of(self, model: Model, version: str, segment: tuple[tuple[str, str], ...]) -> Series:
        series = self._series.get((model.name, version, segment))
        if series is None:
            series = self._series[(model.name, version, segment)] = Series(model.name, version, dict(segment))
            series.rolling = [RollingWindow(series, spec, model.classes) for spec in self.rolling_specs]
            if self.detectors.rules:
                series.detectors = self.detectors.watch(model.name, version, series.segment, series.segment_key,
                                                        model.classes is None)
        return series

    def final_at(self, end: float | None) -> float:
        """The watermark from which a window that ends at ``end`` (None: never) is final
        (``core.windows.final_at``)."""
        return final_at(end, self.config.join_ttl_s)

    def _window(self, series: Series, spec: WindowSpec, start: int, model: Model) -> Window:
        window = series.windows.get((spec, start))
        if window is None:
            window = series.windows[(spec, start)] = Window(series, spec, start, model.classes)
            heapq.heappush(self._final_heap, (self.final_at(spec.end(start)), next(self._seq), window))
        return window
