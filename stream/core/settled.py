"""Requests that their own records settle, counted as arrays (``Engine.take_settled``).

A request is *settled* when its records alone decide everything it counts, whatever other
requests do and wherever the engine's sweeps fall: one prediction (a class as a string, or a
regression model's number) and at most one label of the same kind, where an early label comes no
more than the TTL (plus the watermark's lag) before its prediction, so no sweep can orphan it
first, and a late one less than twice the TTL after, so it still finds its prediction or the
tombstone of its expiry. With every name of the input within the limits (nothing is refused or
folded, so the order of admission does not matter), such a request counts the same whenever its
records come: a joined pair in the windows of its prediction's time, a late label, an expired
prediction or an orphaned label. Replay (``stream.replay.bulk``) hands the engine all its records
at once, counts the settled requests here, in a few array operations, and feeds the others
through ``receive_many`` in time order, with ``observe`` at the times ``ticks`` gives for the
settled ones, so that sweeps and final records fall where they would have
(``tests/unit/core/test_settled.py`` holds the two ways equal). Each column is coded once
(``_Codes``: a row's code is the first row that holds an equal value), so that the limits, class
ids and score layouts are worked out once per distinct value, and the rest on arrays of codes.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from stream.core.codes import unique_ints
from stream.core.columns import LabelColumns, PredictionColumns
from stream.core.health import Health
from stream.core.join import SWEEP_EVERY_S, JoinBuffer
from stream.core.rules import RuleBook
from stream.core.sampling import Sampler
from stream.core.series import Model, WindowSet
from stream.core.settings import Settings

__all__ = ["Settled"]

_NUMBERS = {int, float}  # a regression model's targets (not bool)
Mask = npt.NDArray[np.bool_]


class Settled:
    """``take_settled`` and ``ticks``; the engine holds the state (see :class:`stream.core.engine.Engine`)."""

    config: Settings
    models: dict[str, Model]
    health: Health
    sampler: Sampler
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

    def sampled(self, predictions: PredictionColumns, labels: LabelColumns) -> tuple[PredictionColumns, LabelColumns]:
        """The rows of the requests that sampling keeps (see ``core.sampling``), all of them
        without sampling; the others are counted as unsampled, as ``receive`` counts them."""
        if self.sampler.every:
            return predictions, labels
        keep_p, keep_l = self.sampler.keeps_many(predictions.request_ids), self.sampler.keeps_many(labels.request_ids)
        self.health.add_unsampled(keep_p.count(False), keep_l.count(False))
        return predictions.take(keep_p), labels.take(keep_l)

    def take_settled(self, predictions: PredictionColumns, labels: LabelColumns) -> tuple[Mask, Mask]:
        """Count the settled requests among all the records of an input (see the module), before
        any other (the columns' ``rows`` order records of one time as they would come); returns
        which predictions and which labels it counted. The engine must be new,
        and write final records only, with no rules, detectors or rolling windows (whose pairs
        count one by one in order); otherwise, or when the input's names exceed a limit, it counts
        nothing."""
        none = np.zeros(len(predictions), dtype=bool), np.zeros(len(labels), dtype=bool)
        if (self.models or self.watermark != -math.inf or self.revisions or self.rules.rules or self.detectors.rules
                or self.rolling_specs):
            return none
        ttl, lag = float(self.join.ttl_s), self._lag_s
        pcode, lcode = _requests(predictions, labels)
        n = len(predictions) + len(labels)
        classifier = {name: not self.config.is_regression(name) for name in set(predictions.models)}
        classifies = np.fromiter(map(classifier.__getitem__, predictions.models), bool, len(predictions))
        codes = _Codes(predictions, labels)
        if not self._within_limits(predictions, labels, codes, pcode, lcode, classifies):
            return none
        settled = (np.bincount(pcode, minlength=n) <= 1) & (np.bincount(lcode, minlength=n) <= 1)
        values = predictions.values
        settled[pcode[~np.where(classifies, _classes(values, codes.values), _targets(values, codes.values))]] = False
        targets = np.zeros(n, dtype=bool)  # requests a regression model predicted for
        targets[pcode[~classifies]] = True
        settled[lcode[~np.where(targets[lcode], _targets(labels.values, codes.label_values),
                                _classes(labels.values, codes.label_values))]] = False
        pts, lts = predictions.timestamps, labels.timestamps
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
        order = np.lexsort((np.array(predictions.rows, dtype=np.int64), pts)).tolist()  # by time, then where from
        for row in order:  # every model, numbered as they come in time (never refused: within the limits)
            name = predictions.models[row]
            if name not in self.models:
                self._model(name, float(pts[row]))
                if len(self.models) == len(classifier):
                    break
        self._count_settled(predictions, np.flatnonzero(taken_p), label_of[pcode], labels, codes)
        self.health.labels += int(np.count_nonzero(taken_l))
        self.health.orphaned_labels += int(np.count_nonzero(taken_l & (prediction_of[lcode] < 0)))
        return taken_p, taken_l

    def _count_settled(self, columns: PredictionColumns, rows: npt.NDArray[np.int64],
                       label_of: npt.NDArray[np.int64], labels: LabelColumns, codes: _Codes) -> None:
        """The settled predictions ``rows`` into their window sets, with the pairs they make
        (``label_of``: the row of each prediction's label in ``labels``, or -1; ``codes``: the
        columns' codes)."""
        health = self.health
        health.predictions += len(rows)
        models, sets = self.models, self._sets
        pts = columns.timestamps[rows]
        chosen = rows.tolist()
        slots = (pts // self._slot_s).astype(np.int64)
        model_codes = codes.models[rows]
        key = _paired(_paired(_paired(model_codes, codes.versions[rows]), codes.segments[rows]),
                      slots - slots.min(initial=0))
        group, first = _first_come(key)  # window sets numbered 0, 1, ... in the order they come
        owners = []
        for at, slot in zip(first.tolist(), slots[first].tolist(), strict=True):
            row = chosen[at]
            name, version, segment = columns.models[row], columns.versions[row], columns.segments[row]
            wset = sets.get((name, version, segment, slot))
            owners.append(wset if wset is not None else self._window_set(models[name], version, segment, slot,
                                                                         float(pts[at])))
        for wset, count in zip(owners, np.bincount(group, minlength=len(owners)).tolist(), strict=True):
            wset.predictions += count
        guesses = self._class_ids(model_codes, codes.values[rows], columns.models, columns.values)
        label_rows = label_of[rows]
        paired = label_rows >= 0
        lags = np.where(paired, np.append(labels.timestamps, 0.0)[label_rows] - pts, 0.0)
        late = paired & (lags > self.join.ttl_s)
        joined = np.flatnonzero(paired & ~late)
        health.expired_predictions += len(rows) - len(joined)  # late, or never labelled: expired
        health.late_labels += int(np.count_nonzero(late))
        health.joined_labels += len(joined)
        health.add_pairs(lags[joined])
        regression = _by_code(model_codes, lambda code: models[columns.models[code]].classes is None, bool)
        for j, i in zip(joined[regression[joined]].tolist(), label_rows[joined[regression[joined]]].tolist(),
                        strict=True):  # exact sums, in any order
            stats = owners[group[j]].targets
            assert stats is not None
            stats.update(float(labels.values[i]), float(columns.values[chosen[j]]))
        joined = joined[~regression[joined]]
        joined = joined[np.argsort(group[joined], kind="stable")]
        truths = self._class_ids(model_codes[joined], codes.label_values[label_rows[joined]], columns.models,
                                 labels.values)
        pair_rows = rows[joined]
        kinds, layout_names = self._layouts(columns, codes.layouts, pair_rows, model_codes[joined])
        starts, probabilities = columns.score_starts(), columns.score_values

        def scores(kind: int, at: npt.NDArray[np.int64]) -> tuple[tuple[str, ...], npt.NDArray[np.float64]]:
            """The names and probabilities of the pairs ``at`` (of one ``kind``), a row each."""
            names = layout_names[kind]
            return names, probabilities[starts[pair_rows[at]][:, None] + np.arange(len(names))]

        self._add_pairs(owners, group[joined], truths, guesses[joined], kinds, scores)  # marks every owner
        self._fold()

    def _class_ids(self, model_codes: npt.NDArray[np.int64], value_codes: npt.NDArray[np.int64],
                   model_names: list[str], values: list[Any]) -> npt.NDArray[np.int64]:
        """The class id of each row's value for its model (0 for a regression model's): the model
        ``model_names[model_codes[i]]``, the value ``values[value_codes[i]]`` (codes: ``_coded``);
        classes new to a model are numbered in the order they come."""
        out = np.zeros(len(value_codes), dtype=np.int64)
        for code in unique_ints(model_codes).tolist():
            model = self.models[model_names[code]]
            if model.classes is None:
                continue
            at = np.flatnonzero(model_codes == code)
            found, first, inverse = unique_ints(value_codes[at], return_index=True, return_inverse=True)
            known = model.classes.ids
            ids = np.empty(len(found), dtype=np.int64)
            for k in np.argsort(first, kind="stable").tolist():
                value = values[int(found[k])]
                ids[k] = known[value] if value in known else self._class_id(model, value)
            out[at] = ids[inverse]
        return out

    def _layouts(self, columns: PredictionColumns, layouts: npt.NDArray[np.int64], rows: npt.NDArray[np.int64],
                 model_codes: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.int64], list[tuple[str, ...]]]:
        """For pairs of the predictions ``rows`` (of the models ``model_codes``; ``layouts``: the
        codes of the column's score names): which pairs of a model have scores of the same names,
        numbered in the order they come (-1: no scores), and those names (``_add_pairs``'s ``kinds``)."""
        kinds = np.full(len(rows), -1, dtype=np.int64)
        names = columns.score_names
        codes = layouts[rows]
        scored = np.flatnonzero(codes != _code_of(names, None))
        if not len(scored):
            return kinds, []
        numbers = _by_code(model_codes[scored], lambda code: self.models[columns.models[code]].number, np.int64)
        kinds[scored], first = _first_come(numbers * len(names) + codes[scored])
        return kinds, [names[int(codes[scored[at]])] for at in first.tolist()]  # type: ignore[misc]

    def _within_limits(self, predictions: PredictionColumns, labels: LabelColumns, codes: _Codes,
                       pcode: npt.NDArray[np.int64], lcode: npt.NDArray[np.int64], classifies: Mask) -> bool:
        """Whether the input's names fit every limit (then none is refused or folded, whatever
        the order they come in): models, versions, segment keys and values, and classes (of a
        classification model's predictions, and of the labels of requests classified: for each
        model, at least as many as it meets)."""
        config, models = self.config, predictions.models
        versions: dict[str, set[str]] = {}
        for at, version in _distinct(codes.models, codes.versions):
            versions.setdefault(models[at], set()).add(predictions.versions[version])
        segments: dict[str, set[tuple[str, str]]] = {}
        for at, segment in _distinct(codes.models, codes.segments):
            segments.setdefault(models[at], set()).update(predictions.segments[segment])
        classes: dict[str, set[tuple[type, Any]]] = {}
        values = predictions.values
        for at, value in _distinct(codes.models, codes.values, np.flatnonzero(classifies)):
            classes.setdefault(models[at], set()).add((type(values[value]), values[value]))
        classified = np.zeros(int(max(pcode.max(initial=-1), lcode.max(initial=-1))) + 1, dtype=bool)
        classified[pcode[classifies]] = True
        label_classes = {(type(labels.values[code]), labels.values[code])
                         for code in unique_ints(codes.label_values[classified[lcode]]).tolist()}
        if len(versions) > config.max_models or any(len(found | label_classes) > config.max_classes
                                                    for found in classes.values()):
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
        sweep = (timestamps - self._lag_s) // SWEEP_EVERY_S
        _, interval = unique_ints((sweep - sweep.min()).astype(np.int64), return_inverse=True)
        firsts = np.full(int(interval.max()) + 1, np.inf)  # the first time of each interval, in order
        np.minimum.at(firsts, interval, timestamps)
        out: list[float] = firsts.tolist()
        last = float(timestamps.max())
        return out if out[-1] == last else [*out, last]


def _requests(predictions: PredictionColumns, labels: LabelColumns
              ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Each row's request number: the row where its request id first comes, the predictions' rows
    first, then the labels'. From the ids' hashes (``id_hashes``) when no two ids share one (the
    ids of each hash checked equal), else by a dict of the ids."""
    count = len(predictions)
    hashes = np.concatenate([predictions.id_hashes, labels.id_hashes])
    if len(hashes) == count + len(labels):
        _, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
        code = first[inverse]
        ids = np.array(predictions.request_ids + labels.request_ids, dtype=object)
        if (ids[code] == ids).all():
            return code[:count], code[count:]
    found: dict[str, int] = {}
    return (np.fromiter(map(found.setdefault, predictions.request_ids, itertools.count()), np.int64, count),
            np.fromiter(map(found.setdefault, labels.request_ids, itertools.count(count)), np.int64, len(labels)))


def _classes(values: list[Any], codes: npt.NDArray[np.int64]) -> Mask:
    """Which values (coded as ``_coded_values`` codes them) are classes the settled path counts: strings."""
    return _by_code(codes, lambda code: isinstance(values[code], str), bool)


def _targets(values: list[Any], codes: npt.NDArray[np.int64]) -> Mask:
    """Which values (coded as ``_coded_values`` codes them) are a regression model's targets:
    numbers (not booleans)."""
    return _by_code(codes, lambda code: type(values[code]) in _NUMBERS, bool)


class _Codes:
    """The columns' values as codes (``_coded``), each column coded once: models, versions,
    segments, score names and predicted values of the predictions; values of the labels."""

    def __init__(self, predictions: PredictionColumns, labels: LabelColumns) -> None:
        self.models = _coded(predictions.models)
        self.versions = _coded(predictions.versions)
        self.segments = _coded(predictions.segments)
        self.layouts = _coded(predictions.score_names)
        self.values = _coded_values(predictions.values)
        self.label_values = _coded_values(labels.values)


def _coded(column: list[Any]) -> npt.NDArray[np.int64]:
    """Each row's code: the first row that holds a value equal to its own."""
    first: dict[Any, int] = {}
    return np.fromiter(map(first.setdefault, column, itertools.count()), np.int64, len(column))


def _coded_values(column: list[Any]) -> npt.NDArray[np.int64]:
    """As ``_coded``, where values equal but of other types (1, 1.0 and True) differ."""
    if len(set(map(type, column))) <= 1:
        return _coded(column)
    return _coded(list(zip(map(type, column), column, strict=True)))


def _code_of(column: list[Any], value: Any) -> int:
    """The code (``_coded``) of ``value`` in ``column``, or -1 if it has none."""
    try:
        return column.index(value)
    except ValueError:
        return -1


def _distinct(a: npt.NDArray[np.int64], b: npt.NDArray[np.int64], rows: npt.NDArray[np.int64] | None = None
              ) -> list[tuple[int, int]]:
    """The distinct pairs of codes ``(a[i], b[i])`` of ``rows`` (else of every row), in ascending order."""
    if rows is not None:
        a, b = a[rows], b[rows]
    keys, a_found, b_found = _pair_keys(a, b)
    width = len(b_found)
    return [(int(a_found[k // width]), int(b_found[k % width])) for k in unique_ints(keys).tolist()]


def _paired(a: npt.NDArray[np.int64], b: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """One code for each distinct pair ``(a[i], b[i])`` of codes (non-negative), numbered from 0
    in the pairs' ascending order; a number below the count of rows."""
    inverse: npt.NDArray[np.int64] = unique_ints(_pair_keys(a, b)[0], return_inverse=True)[1]
    return inverse


def _pair_keys(a: npt.NDArray[np.int64], b: npt.NDArray[np.int64]
               ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """A key for each pair ``(a[i], b[i])`` of codes, in the pairs' order and below the count of rows
    squared (the ranks of ``a[i]`` and ``b[i]`` among their distinct values), and those values."""
    a_found, a_rank = unique_ints(a, return_inverse=True)
    b_found, b_rank = unique_ints(b, return_inverse=True)
    return a_rank * len(b_found) + b_rank, a_found, b_found


def _first_come(keys: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Each row's number among the distinct ``keys``, numbered 0, 1, ... in the order they first
    come, and the row where each first comes."""
    found, first, inverse = unique_ints(keys, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty(len(found), dtype=np.int64)
    rank[order] = np.arange(len(found))
    return rank[inverse], first[order]


def _by_code(codes: npt.NDArray[np.int64], of: Callable[[int], Any], dtype: Any) -> npt.NDArray[Any]:
    """``of(code)`` for each of ``codes``, called once per distinct code."""
    found, inverse = unique_ints(codes, return_inverse=True)
    out: npt.NDArray[Any] = np.array([of(code) for code in found.tolist()], dtype=dtype)[inverse]
    return out
