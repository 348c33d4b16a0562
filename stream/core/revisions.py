"""Revisions: when a duplicate wins over the label or prediction its request paired with (see
:mod:`stream.core.join`), the old pair leaves its windows and the join's counts, and the new one
comes in through the engine's usual path. The engine's side of "figures are a function of the
records, not of their arrival"; :class:`stream.core.engine.Engine` is a ``Revisions``."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from typing import Any

from stream.core.admission import OTHER
from stream.core.detector_book import DetectorBook
from stream.core.errors import InvalidRecord
from stream.core.health import LAG_BUCKETS_S, Health, lag_units
from stream.core.join import LATE, SHARED, SHARED_LATE, JoinBuffer
from stream.core.pending import PendingCodec, PendingLabel, PendingPrediction, pending_ts
from stream.core.records import class_name, target_number
from stream.core.series import Model, Window, WindowSet
from stream.core.settings import Settings

__all__ = ["LABEL_RANK", "Revisions"]

LABEL_RANK = {None: 0, "invalid": 1, "late": 2, "joined": 3}  # a label's best outcome over its pairs


class Revisions:
    """Undoing a pair, and what a label or prediction counts as; the engine holds the state."""

    config: Settings
    health: Health
    join: JoinBuffer
    rolling_specs: list[Any]
    detectors: DetectorBook
    _codec: PendingCodec
    _numbered: dict[int, WindowSet]
    _dirty_sets: list[WindowSet]
    _dirty_windows: list[Window]
    _resolve_label: Callable[..., str]

    def _count_prediction(self, wset: WindowSet | None, sign: int) -> None:
        if wset is not None:
            wset.predictions += sign
            if not wset.dirty:
                wset.dirty = True
                self._dirty_sets.append(wset)

    def _revise_prediction(self, entry: PendingPrediction, label: PendingLabel, request_id: str) -> None:
        """A prediction that wins over its model's one that paired with ``label``: that pair goes,
        this one counts, and the label counts as the best of its pairs."""
        self.health.duplicate_predictions += 1
        (_, [(old_outcome, old)]), others = self.join.replaced, self.join.shared_with
        self._count_prediction(self._numbered.get(self._codec.unpack(old)[1]), -1)
        before = self._status(label, [*others, (old_outcome, old)])
        if old_outcome is LATE or not self._unpair(old, label, request_id):
            self.health.expired_predictions -= 1
        late = label[0] - pending_ts(entry) > self.config.join_ttl_s
        status = self._resolve_label(label, [(SHARED_LATE if late else SHARED, entry)], request_id)
        rest = self._status(label, others) if others else "invalid"
        after = status if LABEL_RANK[status] >= LABEL_RANK[rest] else rest
        if after != before:
            self._count_label(before, -1)
            self._count_label(after, 1)

    def _prediction_rank(self, entry: PendingPrediction) -> tuple[Any, ...]:
        """How a model's predictions for one request compare: by timestamp, ties by content (the
        class or target, the scores, the version)."""
        ts, number, guess, names, probs = self._codec.unpack(entry)
        wset = self._numbered.get(number)
        if wset is None:
            return ts, "", (), probs, ""
        classes = wset.model.classes
        return (ts, str(guess) if classes is None else classes.names[guess], names or (), probs,
                wset.group[0].model_version)

    def _status(self, label: PendingLabel, matches: list[tuple[Any, PendingPrediction]]) -> str:
        """What a label counts as over its pairs: joined if one counts, else late, else invalid (a
        label pairs with each model's prediction; whichever came first, it counts as the best)."""
        best = "invalid"
        for outcome, prediction in matches:
            if outcome is LATE or outcome is SHARED_LATE:
                best = "late"
                continue
            wset = self._numbered.get(self._codec.unpack(prediction)[1])
            if wset is None or self._truth(wset.model, label[1]) is not None:  # gone: ``_pair`` counted it
                return "joined"
        return best

    def _count_label(self, status: str | None, sign: int) -> None:
        health = self.health
        if status == "joined":
            health.joined_labels += sign
        elif status == "late":
            health.late_labels += sign
        elif status == "invalid":
            health.invalid_labels += sign

    def _unresolve_label(self, label: PendingLabel, matches: list[tuple[Any, PendingPrediction]],
                         request_id: str) -> None:
        """Undo what ``_resolve_label`` (and later predictions that shared the label) counted for a
        label that another one won over: its pairs leave their windows, the predictions it expired
        and the label's own count are taken back. A dead letter it caused stays sent."""
        status = self._status(label, matches)
        for outcome, prediction in matches:
            if outcome is LATE or outcome is SHARED_LATE or not self._unpair(prediction, label, request_id):
                self.health.expired_predictions -= 1
        self._count_label(status, -1)

    def _unpair(self, prediction: PendingPrediction, label: PendingLabel, request_id: str) -> bool:
        """Take a pair that ``_pair`` counted out of its windows again; False if ``_pair`` refused
        it (the label could not count for the prediction's model: the prediction expired)."""
        ts, number, guess, names, probs = self._codec.unpack(prediction)
        wset = self._numbered.get(number)
        if wset is None:  # all its windows are final (as ``_pair`` found them, or since): the join's count only
            self._count_pair(label[0] - ts, -1)
            return True
        model = wset.model
        classes = model.classes
        truth = self._truth(model, label[1])
        if truth is None:
            return False
        self._count_pair(label[0] - ts, -1)
        scores = dict(zip(names, probs, strict=True)) if names is not None and classes is not None else None
        dirty_windows = self._dirty_windows
        for window in wset.windows:
            if window.series.windows.get((window.spec, window.start)) is not window:
                continue  # final already: its record went out
            if classes is None:
                window.regression.update(truth, guess, -1)  # type: ignore[union-attr]
            else:
                window.cm.add(truth, guess, -1)  # type: ignore[union-attr]
                if scores is not None:
                    window.scores.update(classes.names[truth], scores, -1)
                    window.bins.update(classes.names[truth], scores, -1)  # type: ignore[union-attr]
            window.changed = True
            if not window.dirty:
                window.dirty = True
                dirty_windows.append(window)
        if self.rolling_specs or self.detectors.rules:
            done_ts = ts if ts > label[0] else label[0]
            for series in wset.group:
                for rolling in series.rolling:
                    if rolling.remove(done_ts, request_id) and not rolling.dirty:
                        rolling.dirty = True
                        dirty_windows.append(rolling)
                if series.detectors:
                    self.detectors.remove(done_ts, request_id, series.detectors)
        return True

    def _count_pair(self, lag: float, sign: int) -> None:
        health = self.health
        health.pairs += sign
        health.label_lag_units += sign * lag_units(lag)
        health.label_lag_buckets[bisect_left(LAG_BUCKETS_S, lag)] += sign

    @staticmethod
    def _truth(model: Model, value: Any) -> Any:
        """A label's class id (or target) for a model it paired with, as ``_pair`` found it, without
        registering anything; None if it could not count."""
        classes = model.classes
        try:
            if classes is None:
                return target_number(value)
            name = value if type(value) is str else class_name(value)
        except InvalidRecord:
            return None
        found = classes.ids.get(name)
        return classes.ids.get(OTHER) if found is None else found  # not there: folded when it paired
