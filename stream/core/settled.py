"""Requests that their own records settle, counted as arrays (``Engine.take_settled``).

A request is *settled* when its records alone decide everything it counts, whatever other
requests do and wherever the engine's sweeps fall: one prediction of a classification model (a
class as a string) and at most one label (a string), where an early label comes no more than
the TTL (plus the watermark's lag) before its prediction, so no sweep can orphan it first, and a
late one no more than twice the TTL after, so it still finds its prediction or the tombstone of its
expiry. With every name of the input within the limits (nothing is refused or folded, so the
order of admission does not matter), such a request counts the same whenever its records come:
a joined pair in the windows of its prediction's time, a late label, an expired prediction or an
orphaned label. Replay (``stream.replay.bulk``) hands the engine all its records at once, counts
the settled requests here, in a few array operations, and feeds the others through
``receive_many`` in time order, with ``observe`` at the times ``ticks`` gives for the settled ones,
so that sweeps, emissions and final records fall where they would have.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from stream.core.health import LAG_BUCKETS_S, Health
from stream.core.join import SWEEP_EVERY_S, JoinBuffer
from stream.core.records import Label, Prediction
from stream.core.rules import RuleBook
from stream.core.series import Model, WindowSet
from stream.core.settings import Settings

__all__ = ["Settled"]

_LAG_EDGES = np.array(LAG_BUCKETS_S)
Mask = npt.NDArray[np.bool_]


class Settled:
    """``take_settled`` and ``ticks``; the engine holds the state (see :class:`stream.core.engine.Engine`)."""

    config: Settings
    models: dict[str, Model]
    health: Health
    join: JoinBuffer
    rules: RuleBook
    detectors: Any
    rolling_specs: list[Any]
    revisions: bool
    watermark: float
    _lag_s: float
    _slot_s: float
    _sets: dict[tuple[str, str, Any, int], WindowSet]
    _model: Callable[[str, float], Model | None]
    _class_id: Callable[[Model, Any], int]
    _window_set: Callable[..., WindowSet]
    _add_pairs: Callable[..., None]
    _fold: Callable[..., None]
    _score_terms: Callable[..., Any]

    def take_settled(self, predictions: Sequence[Prediction], labels: Sequence[Label]) -> tuple[Mask, Mask]:
        """Count the settled requests among all the records of an input (see the module), before
        any other; returns which predictions and which labels it counted. The engine must be new,
        and write final records only, with no rules, detectors or rolling windows (whose pairs
        count one by one in order); otherwise, or when the input's names exceed a limit, it counts
        nothing."""
        none = np.zeros(len(predictions), dtype=bool), np.zeros(len(labels), dtype=bool)
        if (self.models or self.watermark != -math.inf or self.revisions or self.rules.rules or self.detectors.rules
                or self.rolling_specs):
            return none
        ttl, lag = float(self.join.ttl_s), self._lag_s
        ids: dict[str, int] = {}
        pcode = np.fromiter((ids.setdefault(p.request_id, len(ids)) for p in predictions), np.int64, len(predictions))
        lcode = np.fromiter((ids.setdefault(lb.request_id, len(ids)) for lb in labels), np.int64, len(labels))
        n = len(ids)
        if not self._within_limits(predictions, labels, pcode.tolist(), lcode.tolist()):
            return none
        settled = (np.bincount(pcode, minlength=n) <= 1) & (np.bincount(lcode, minlength=n) <= 1)
        regression = {name: self.config.is_regression(name) for name in {p.model for p in predictions}}
        settled[pcode[~np.fromiter((type(p.value) is str and not regression[p.model] for p in predictions), bool,
                                   len(predictions))]] = False
        settled[lcode[~np.fromiter((type(lb.value) is str for lb in labels), bool, len(labels))]] = False
        pts = np.fromiter((p.timestamp for p in predictions), np.float64, len(predictions))
        lts = np.fromiter((lb.timestamp for lb in labels), np.float64, len(labels))
        label_of = np.full(n, -1, dtype=np.int64)
        label_of[lcode] = np.arange(len(labels))
        prediction_of = np.full(n, -1, dtype=np.int64)
        prediction_of[pcode] = np.arange(len(predictions))
        both = np.flatnonzero((label_of >= 0) & (prediction_of >= 0))
        p_ts, l_ts = pts[prediction_of[both]], lts[label_of[both]]
        # An early label no sweep can orphan before its prediction comes; a late one that still
        # finds its prediction or the tombstone of its expiry (removed no sooner than 2 TTL after).
        safe = (p_ts - lag < l_ts + ttl) & (l_ts - lag < p_ts + 2 * ttl - SWEEP_EVERY_S)
        settled[both[~safe]] = False
        taken_p, taken_l = settled[pcode], settled[lcode]
        firsts: dict[str, tuple[float, int]] = {}
        for i, (p, ts) in enumerate(zip(predictions, pts.tolist(), strict=True)):
            if p.model not in firsts or ts < firsts[p.model][0]:
                firsts[p.model] = (ts, i)
        for name in sorted(firsts, key=firsts.__getitem__):  # every model, numbered as they come in time
            self._model(name, firsts[name][0])  # (never refused: within the limits)
        rows = np.flatnonzero(taken_p)
        self._count_settled([predictions[i] for i in rows.tolist()], pts[rows], label_of[pcode[rows]], labels, lts)
        orphaned = int(np.count_nonzero(taken_l & (prediction_of[lcode] < 0)))
        self.health.labels += int(np.count_nonzero(taken_l))
        self.health.orphaned_labels += orphaned
        return taken_p, taken_l

    def _count_settled(self, predictions: list[Prediction], pts: npt.NDArray[np.float64],
                       label_rows: npt.NDArray[np.int64], labels: Sequence[Label],
                       lts: npt.NDArray[np.float64]) -> None:
        """Settled predictions (``label_rows``: the row of each one's label in ``labels``, or -1)
        into their window sets, with the pairs they make."""
        health = self.health
        health.predictions += len(predictions)
        models = self.models
        slots = (pts // self._slot_s).astype(np.int64).tolist()
        index: dict[tuple[str, str, Any, int], int] = {}
        group = np.fromiter((index.setdefault((p.model, p.model_version, p.segment, slot), len(index))
                             for p, slot in zip(predictions, slots, strict=True)), np.int64, len(predictions))
        _, first = np.unique(group, return_index=True)
        owners = []
        for key, row in zip(index, first.tolist(), strict=True):
            wset = self._sets.get(key)
            owners.append(wset if wset is not None else self._window_set(models[key[0]], key[1], key[2], key[3],
                                                                         float(pts[row])))
        for wset, count in zip(owners, np.bincount(group, minlength=len(owners)).tolist(), strict=True):
            wset.predictions += count
        guesses = np.fromiter((self._class(models[p.model], p.value) for p in predictions), np.int64,
                              len(predictions))
        paired = label_rows >= 0
        lags = np.where(paired, np.append(lts, 0.0)[label_rows] - pts, 0.0)
        late = paired & (lags > self.join.ttl_s)
        joined = np.flatnonzero(paired & ~late)
        health.expired_predictions += len(predictions) - len(joined)  # late, or never labelled: expired
        health.late_labels += int(np.count_nonzero(late))
        health.joined_labels += len(joined)
        health.pairs += len(joined)
        total = health.label_lag_sum_s
        for lag in lags[joined].tolist():
            total += lag
        health.label_lag_sum_s = total
        buckets = health.label_lag_buckets
        for bucket, count in enumerate(np.bincount(np.searchsorted(_LAG_EDGES, lags[joined], side="left"),
                                                   minlength=len(LAG_BUCKETS_S)).tolist()):
            buckets[bucket] += count
        joined = joined[np.argsort(group[joined], kind="stable")]
        chosen = [predictions[i] for i in joined.tolist()]
        truths = np.fromiter((self._class(models[p.model], labels[j].value)
                              for p, j in zip(chosen, label_rows[joined].tolist(), strict=True)), np.int64, len(chosen))
        layouts: dict[tuple[int, tuple[Any, ...]], int] = {}
        kinds = np.fromiter((-1 if p.scores is None else layouts.setdefault((models[p.model].number, p.scores[0::2]),
                                                                           len(layouts)) for p in chosen),
                            np.int64, len(chosen))
        layout_names = [names for _, names in layouts]

        def scores(kind: int, rows: npt.NDArray[np.int64]) -> tuple[tuple[str, ...], npt.NDArray[np.float64]]:
            return layout_names[kind], np.array([chosen[i].scores[1::2] for i in rows.tolist()],
                                         dtype=np.float64).reshape(len(rows), len(layout_names[kind]))

        self._add_pairs(owners, group[joined], truths, guesses[joined], kinds, scores)  # marks every owner
        self._fold()

    def _class(self, model: Model, value: Any) -> int:
        found = model.classes.ids.get(value)  # type: ignore[union-attr]
        return found if found is not None else self._class_id(model, value)

    def _within_limits(self, predictions: Sequence[Prediction], labels: Sequence[Label], pcode: list[int],
                       lcode: list[int]) -> bool:
        """Whether the input's names fit every limit (then none is refused or folded, whatever
        the order they come in): models, versions, segment keys and values, and classes (of a
        classification model's predictions, and of the labels of requests it predicted for)."""
        config = self.config
        versions: dict[str, set[str]] = {}
        segments: dict[str, set[tuple[str, str]]] = {}
        classes: dict[str, set[tuple[type, Any]]] = {}
        predicted: dict[int, set[str]] = {}  # request -> its classification models
        for p, code in zip(predictions, pcode, strict=True):
            versions.setdefault(p.model, set()).add(p.model_version)
            if p.segment:
                segments.setdefault(p.model, set()).update(p.segment)
            if not self.config.is_regression(p.model):
                classes.setdefault(p.model, set()).add((type(p.value), p.value))  # 1 and "1" apart: at least as many
                predicted.setdefault(code, set()).add(p.model)
        for lb, code in zip(labels, lcode, strict=True):
            for model in predicted.get(code, ()):
                classes[model].add((type(lb.value), lb.value))
        if len(versions) > config.max_models or any(len(found) > config.max_classes for found in classes.values()):
            return False
        for model, named in versions.items():
            keys: dict[str, int] = {}
            for key, _ in segments.get(model, ()):
                keys[key] = keys.get(key, 0) + 1
            if (len(named) > config.max_versions_per_model or len(keys) > config.max_segment_keys
                    or any(count > config.max_segment_values for count in keys.values())):
                return False
        return True

    def ticks(self, timestamps: npt.NDArray[np.float64]) -> list[float]:
        """Of records at ``timestamps`` (settled ones, which the engine does not receive), those
        at which ``observe`` moves the engine as receiving them all would: the first of each
        sweep interval of the watermark, and the last. (What else a record's time moves is
        emission, which writes nothing here: final records only, and no rules.)"""
        if not len(timestamps):
            return []
        ts = np.unique(timestamps)
        sweep = (ts - self._lag_s) // SWEEP_EVERY_S
        new = np.ones(len(ts), dtype=bool)
        new[1:] = sweep[1:] != sweep[:-1]
        new[-1] = True
        return ts[new].tolist()  # type: ignore[no-any-return]
