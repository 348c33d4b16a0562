"""Records in batches: ``Engine.receive_many`` (replay, the demo) gives the outcome of
``receive`` on each record in turn, and ``Engine.take_many`` (the Kafka worker) that of
``prediction`` and ``label``: the same records, health counts, dead letters and alerts, in the
same order, at less cost a record. The join's common cases (a prediction for a request with no
state yet, or whose label waits; a label for a request whose one prediction waits) are decided in
one loop without the per-record layers, and the pairs they form are counted together: lag buckets,
pair codes and score terms as array operations, per window set. Anything else goes through
``prediction`` or ``label``, after the pairs formed so far are counted, so that every count is
made in the order the per-record path makes it.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from math import log
from typing import Any

import numpy as np
import numpy.typing as npt

from stream.core.confusion import CODE_BITS
from stream.core.detector_book import DetectorBook
from stream.core.health import Health
from stream.core.ids import Key, compact_ids
from stream.core.join import JOINED, JoinBuffer
from stream.core.metrics import EPS, ONE_MINUS_EPS
from stream.core.pending import (
    INLINE_SCORES,
    MAX_LAYOUTS,
    NO_SCORES,
    PendingCodec,
    PendingLabel,
    PendingPrediction,
    pending_label,
)
from stream.core.records import Label, Prediction
from stream.core.rules import RuleBook
from stream.core.sampling import Sampler
from stream.core.series import Model, Window, WindowSet

__all__ = ["BULK_PAIRS", "FOLD_PAIRS", "Ingest"]

FOLD_PAIRS = 65_536  # buffered pairs that make a flush fold even when it emits nothing (bounds their memory)
BULK_PAIRS = 32  # pairs from which they are counted as arrays; fewer are counted one by one (``_pair``)
_HEAD = struct.Struct("<dIH").unpack_from  # a pending prediction's timestamp, window-set number and class id
# A pair to count: the prediction, the label's value and time, the request id, the prediction's
# window set (None: all its windows are final) and the label's class id for its model.
Deferred = tuple[PendingPrediction, str, float, str, WindowSet | None, int]


class Ingest:
    """``receive_many`` and ``take_many``; the engine holds the state (see
    :class:`stream.core.engine.Engine`)."""

    models: dict[str, Model]
    health: Health
    join: JoinBuffer
    rolling_specs: list[Any]
    revisions: bool
    rules: RuleBook
    detectors: DetectorBook
    watermark: float
    _final_heap: list[tuple[float, int, Window]]
    _lag_s: float
    _stale_after_s: float
    _slot_s: float
    _next_sweep: float
    _next_emit: float
    _sets: dict[tuple[str, str, Any, int], WindowSet]
    _numbered: dict[int, WindowSet]
    _codec: PendingCodec
    _dirty_sets: list[WindowSet]
    _dirty_windows: list[Window]
    _buffered: int
    sampler: Sampler
    observe: Callable[[float], None]
    prediction: Callable[..., bool]
    label: Callable[..., bool]
    _resolve_label: Callable[..., str]
    _pair: Callable[..., str | None]

    def receive_many(self, records: Sequence[Prediction | Label],
                     where: Callable[[int], dict[str, Any]] | None = None) -> None:
        """``receive(records[i], **where(i))`` for each record in turn; ``where`` is asked only
        for the records that may need it (a dead letter, a label that waits)."""
        kept = self.sampler.kept(records, self.health)
        if kept is not None:
            records, where = [records[i] for i in kept], _through(where, kept)
        self._ingest(records, where, True, None, None)

    def take_many(self, records: Sequence[Prediction | Label], where: Callable[[int], dict[str, Any]] | None = None,
                  on_error: Callable[[int, Exception], None] | None = None) -> list[bool]:
        """``prediction`` or ``label`` of each record in turn, without moving event time (an
        adapter that keeps its own watermark calls ``observe``): whether each was taken in.
        ``where(i)`` holds what those take besides the record (a prediction's ``raw``, where it
        came from). A record whose handling raises is not taken, and ``on_error(i, exc)`` hears
        of it (without, it propagates); the others go on."""
        taken: list[bool] = []
        kept = self.sampler.kept(records, self.health)
        if kept is None:
            self._ingest(records, where, False, taken, on_error)
            return taken
        self._ingest([records[i] for i in kept], _through(where, kept), False, taken, _through(on_error, kept))
        every = [False] * len(records)  # a record sampling leaves out is not taken in
        for i, took in zip(kept, taken, strict=True):
            every[i] = took
        return every

    def _ingest(self, records: Sequence[Prediction | Label], where: Callable[[int], dict[str, Any]] | None,
                observe: bool, taken: list[bool] | None, on_error: Callable[[int, Exception], None] | None) -> None:
        keys = compact_ids([record.request_id for record in records])
        self.join.hold(keys)  # the batch's requests in memory, and kept there until it ends
        try:
            self._ingest_held(records, keys, where, observe, taken, on_error)
        finally:
            self.join.release()

    def _ingest_held(self, records: Sequence[Prediction | Label], keys: list[Key],
                     where: Callable[[int], dict[str, Any]] | None, observe: bool, taken: list[bool] | None,
                     on_error: Callable[[int, Exception], None] | None) -> None:
        lag, stale_after, slot_s = self._lag_s, self._stale_after_s, self._slot_s
        models, sets, numbered = self.models, self._sets, self._numbered
        join, health = self.join, self.health
        insert, pair_pending, pair_waiting = join.insert_prediction, join.pair_pending, join.pair_waiting
        pack = self._codec.pack
        ttl = join.ttl_s
        deferred: list[Deferred] = []
        defer = not self.rolling_specs  # a rolling window takes its pairs one by one (``_pair``)
        detect = bool(self.detectors.rules)
        dirty_sets = self._dirty_sets
        wm, next_sweep, next_emit = self.watermark, self._next_sweep, self._next_emit
        if not observe:
            lag = next_emit = math.inf  # never reached: event time stays where the adapter puts it
        took = taken.append if taken is not None else None
        for i, record in enumerate(records):
            ts = record.timestamp
            if ts - lag > wm or ts >= next_emit:
                if ts - lag >= next_sweep or ts >= next_emit:
                    if deferred and self._folds(ts):
                        self._count_deferred(deferred)
                    self.observe(ts)
                    wm, next_sweep, next_emit = self.watermark, self._next_sweep, self._next_emit
                    sets, numbered, dirty_sets = self._sets, self._numbered, self._dirty_sets  # replaced there
                else:
                    wm = self.watermark = ts - lag
            if type(record) is Prediction:
                model = models.get(record.model)
                if model is not None and model.classes is not None and ts + stale_after > wm:
                    guess = model.classes.ids.get(record.value) if type(record.value) is str else None
                    wset = sets.get((model.name, record.model_version, record.segment, int(ts // slot_s)))
                    if guess is not None and wset is not None:
                        entry = pack(ts, wset.number, False, guess, record.scores)
                        waiting = None
                        if insert(keys[i], model.number, entry, ts) or (
                                waiting := pair_waiting(keys[i], model.number, entry, ts)) is not None:
                            health.predictions += 1
                            wset.predictions += 1
                            if not wset.dirty:
                                wset.dirty = True
                                dirty_sets.append(wset)
                            if took is not None:
                                took(True)
                            if waiting is None:
                                continue
                            lts, value = waiting[0], waiting[1]
                            if lts - ts > ttl:  # late: the prediction expires, as ``_resolve_label`` counts
                                health.expired_predictions += 1
                                health.late_labels += 1
                                continue
                            truth = model.classes.ids.get(value) if type(value) is str else None
                            if truth is not None and defer:
                                health.joined_labels += 1
                                deferred.append((entry, value, lts, record.request_id, wset, truth))
                                if detect:  # its detectors have it now (``_pair`` is told so)
                                    self._detect(ts, lts, record.request_id, wset, truth, guess)
                                continue
                            self._count_deferred(deferred)
                            self._general(i, record, where, on_error, (waiting, entry, False))
                            continue
            else:
                value = record.value
                if type(value) is str:
                    known = pair_pending(keys[i], (ts, value))
                    if known is not None:
                        health.labels += 1
                        if took is not None:
                            took(True)
                        pred_ts, number, guess = _HEAD(known)
                        if ts - pred_ts > ttl:  # late: the prediction expires, as ``_resolve_label`` counts
                            health.expired_predictions += 1
                            health.late_labels += 1
                            continue
                        wset = numbered.get(number)
                        classes = None if wset is None else wset.model.classes
                        truth = 0 if wset is None else None if classes is None else classes.ids.get(value)
                        if truth is not None and defer:
                            health.joined_labels += 1
                            deferred.append((known, value, ts, record.request_id, wset, truth))
                            if detect and wset is not None:
                                self._detect(pred_ts, ts, record.request_id, wset, truth, guess)
                            if wset is not None and not wset.dirty:  # in the order ``_pair`` marks them
                                wset.dirty = True
                                dirty_sets.append(wset)
                            continue
                        self._count_deferred(deferred)
                        self._general(i, record, where, on_error, ((ts, value), known, True))
                        continue
                if join.insert_label(keys[i], pending_label(ts, value, where(i) if where is not None else None)):
                    health.labels += 1  # it waits for its prediction, as ``Engine.label`` keeps it
                    if took is not None:
                        took(True)
                    continue
            self._count_deferred(deferred)
            outcome = self._general(i, record, where, on_error, None)
            if took is not None:
                took(outcome)
        self._count_deferred(deferred)

    def _general(self, i: int, record: Prediction | Label, where: Callable[[int], dict[str, Any]] | None,
                 on_error: Callable[[int, Exception], None] | None,
                 paired: tuple[PendingLabel, PendingPrediction, bool] | None) -> bool:
        """A record the loop does not decide, through the per-record path; ``paired``: the label
        and prediction the join just paired, to count as ``_resolve_label`` does (with where the
        record came from, when it is the label)."""
        try:
            extra = where(i) if where is not None else {}
            if paired is not None:
                label, prediction, here = paired
                self._resolve_label(label, [(JOINED, prediction)], record.request_id, **(extra if here else {}))
                return True
            if type(record) is Prediction:
                return self.prediction(record, **extra)
            return self.label(record, **extra)
        except Exception as exc:
            if on_error is None:
                raise
            on_error(i, exc)
            return False

    def _folds(self, ts: float) -> bool:
        """Whether ``observe(ts)`` reads the windows' counts: it closes a window, or its flush
        folds (see ``Engine.flush``). Else the pairs formed so far may wait to be counted."""
        watermark = ts - self._lag_s
        heap = self._final_heap
        if watermark > self.watermark and watermark >= self._next_sweep and heap and heap[0][0] <= watermark:
            return True
        return ts >= self._next_emit and (self.revisions or bool(self.rules.rules) or self._buffered >= FOLD_PAIRS)

    def _count_deferred(self, deferred: list[Deferred]) -> None:
        """Count the pairs the loop formed, as ``_pair`` would one by one, and empty the list."""
        if not deferred:
            return
        if len(deferred) < BULK_PAIRS:
            for known, value, ts, request_id, _, _ in deferred:
                self._pair(known, (ts, value), request_id, detected=True)
            deferred.clear()
            return
        self._count_bulk(deferred)
        deferred.clear()

    def _count_bulk(self, deferred: list[Deferred]) -> None:
        """``_pair`` for many pairs at once, to the same counts and sums."""
        health = self.health
        entries = [item[0] for item in deferred]
        table = self._codec.unpack_heads(entries)
        if (table["layout"] == INLINE_SCORES).any():  # score names inline (rare): one by one
            for known, value, ts, request_id, _, _ in deferred:
                self._pair(known, (ts, value), request_id, detected=True)
            return
        lags = np.array([item[2] for item in deferred]) - table["ts"]
        health.add_pairs(lags)
        self._register_score_names(deferred, table)
        wsets = [item[4] for item in deferred]
        rows = np.arange(len(deferred)) if None not in wsets else np.flatnonzero(
            np.array([wset is not None for wset in wsets]))  # else all its windows are final: the join's count only
        if not len(rows):
            return
        # Pairs by window set (its number), the sets in the order they first come.
        _, first, group = np.unique(table["number"][rows], return_index=True, return_inverse=True)
        by_arrival = np.argsort(first, kind="stable")
        rank = np.empty_like(by_arrival)
        rank[by_arrival] = np.arange(len(by_arrival))
        group = rank[group]
        owners: list[WindowSet] = [wsets[i] for i in rows[first[by_arrival]].tolist()]
        order = np.argsort(group, kind="stable")
        rows, group = rows[order], group[order]
        truths = np.array([deferred[i][5] for i in rows.tolist()], dtype=np.int64)
        layouts = table["layout"][rows].astype(np.int64)
        models = np.array([wset.model.number for wset in owners], dtype=np.int64)[group]
        kinds = np.where(layouts != NO_SCORES, models << 8 | layouts, -1)

        def scores(kind: int, chosen: npt.NDArray[np.int64]) -> tuple[tuple[str, ...], npt.NDArray[np.float64]]:
            names = self._codec.layout(kind & 255)
            return names, self._codec.probabilities([entries[i] for i in rows[chosen].tolist()], len(names))

        self._add_pairs(owners, group, truths, table["guess"][rows].astype(np.int64), kinds, scores)

    def _add_pairs(self, owners: list[WindowSet], group: npt.NDArray[np.int64], truths: npt.NDArray[np.int64],
                   guesses: npt.NDArray[np.int64], kinds: npt.NDArray[np.int64],
                   scores: Callable[[int, npt.NDArray[np.int64]], tuple[tuple[str, ...], npt.NDArray[np.float64]]]
                   ) -> None:
        """Buffer pairs in their window sets, as ``_pair`` buffers each: pair i in ``owners[group[i]]``
        (``group`` ascending), its label's and prediction's class ids ``truths[i]`` and
        ``guesses[i]``; ``kinds[i]`` (-1: no scores) numbers the pairs of one model whose scores
        share their names, and ``scores(kind, rows)`` gives those names and the rows' probabilities."""
        bounds = np.searchsorted(group, np.arange(len(owners) + 1)).tolist()
        codes = memoryview(((truths << CODE_BITS) | guesses).tobytes())
        for g, wset in enumerate(owners):
            wset.codes.frombytes(codes[8 * bounds[g]:8 * bounds[g + 1]])
        self._buffered += len(group)
        for kind in np.unique(kinds[kinds >= 0]).tolist():
            chosen = np.flatnonzero(kinds == kind)
            model = owners[int(group[chosen[0]])].model
            names, probs = scores(kind, chosen)
            terms, keys = self._score_terms(model, names, truths[chosen], probs)
            edges = np.searchsorted(group[chosen], np.arange(len(owners) + 1)).tolist()
            for g, wset in enumerate(owners):
                a, b = edges[g], edges[g + 1]
                if a < b:
                    wset.scored += b - a
                    wset.terms.frombytes(terms[a:b].tobytes())
                    wset.score_keys.frombytes(keys[a:b].tobytes())
                    wset.score_values.frombytes(probs[a:b].tobytes())
        dirty_sets = self._dirty_sets
        for wset in owners:
            if not wset.dirty:
                wset.dirty = True
                dirty_sets.append(wset)

    def _detect(self, pred_ts: float, label_ts: float, request_id: str, wset: WindowSet, truth: int,
                guess: int) -> None:
        """A pair the loop formed, to its series' detectors when it forms, as ``_pair`` gives it."""
        for series in wset.group:
            if series.detectors:
                self.detectors.push(pred_ts if pred_ts > label_ts else label_ts, request_id, series.detectors,
                                    truth, guess, wset.model.classes.names)  # type: ignore[union-attr]

    def _register_score_names(self, deferred: list[Deferred], table: np.ndarray) -> None:
        """Number the score names new to a model in the order ``_pair`` would meet them."""
        layouts = table["layout"]
        scored = np.flatnonzero(layouts < MAX_LAYOUTS)
        if not len(scored):
            return
        _, first = np.unique(table["number"][scored].astype(np.int64) << 8 | layouts[scored], return_index=True)
        for i in np.sort(scored[first]).tolist():
            wset = deferred[i][4]
            if wset is not None:
                index = wset.model.score_classes
                for name in self._codec.layout(int(layouts[i])):
                    index.id(name)

    @staticmethod
    def _score_terms(model: Model, names: tuple[str, ...], truths: npt.NDArray[np.int64],
                     probs: npt.NDArray[np.float64]) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
        """What ``WindowSet.add_scores`` buffers for pairs of ``model`` whose scores share ``names``
        (``probs``: a row each) and whose labels are the class ids ``truths``: the log loss and Brier
        terms (a row each, bit for bit: numpy's IEEE arithmetic, the logarithm from ``math`` as
        there) and the histogram keys."""
        classes = model.classes
        assert classes is not None
        index = model.score_classes
        brier = np.zeros(len(truths))
        p_true = np.zeros(len(truths))
        found = np.zeros(len(truths), dtype=bool)
        keys = np.empty(probs.shape, dtype=np.int64)
        for k, name in enumerate(names):
            cid = classes.ids.get(name)
            is_true = truths == (-1 if cid is None else cid)
            p = probs[:, k]
            p_true = np.where(is_true, p, p_true)
            found |= is_true
            q = p - is_true
            brier = brier + q * q
            keys[:, k] = 2 * index.id(name) + is_true
        brier = np.where(found, brier, brier + 1.0)
        if len(names) == 2:
            brier = brier / 2
        clipped = np.clip(np.where(found, p_true, 0.0), EPS, ONE_MINUS_EPS)
        log_loss = np.array([-log(x) for x in clipped.tolist()])
        return np.column_stack((log_loss, brier)), keys


def _through(call: Callable[..., Any] | None, kept: list[int]) -> Callable[..., Any] | None:
    """``call`` taking the index of a record among those ``kept`` (their indexes among all)."""
    if call is None:
        return None
    return lambda i, *args: call(kept[i], *args)
