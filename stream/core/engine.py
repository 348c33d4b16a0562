"""The monitoring engine: join, window, count, emit metric records and alert events.

Adapters (the replay engine, the faust worker) feed it validated records in batches
(``receive_many``, ``take_many``: :mod:`stream.core.ingest`) and watermarks, and drain its outboxes
(``metric_records``, ``alert_events``, ``dead_letters``); the engine never does I/O. Time is event
time: ``advance(watermark)`` expires join state and finalizes windows, ``flush()`` emits one record
per window that changed since the last flush.
"""

from __future__ import annotations

import heapq
import itertools
import math
from bisect import bisect_left
from collections.abc import Callable, Sequence
from typing import Any

from stream.core.admission import OTHER, Admission, Limits, Refusals
from stream.core.confusion import CODE_BITS
from stream.core.custom import MetricBook
from stream.core.detector_book import DetectorBook
from stream.core.errors import InvalidRecord
from stream.core.health import LAG_BUCKETS_S, Health, lag_units
from stream.core.ingest import FOLD_PAIRS, Ingest
from stream.core.join import (
    DUPLICATE,
    LATE,
    PENDING,
    REPLACED,
    REVISED,
    SHARED,
    SHARED_LATE,
    SWEEP_EVERY_S,
    JoinBuffer,
)
from stream.core.merge import assemble
from stream.core.pending import PendingCodec, PendingLabel, PendingPrediction, pending_label, pending_ts
from stream.core.placement import Placement
from stream.core.records import Label, Prediction, target_number
from stream.core.revisions import LABEL_RANK, Revisions
from stream.core.rules import RuleBook, rfc3339
from stream.core.sampling import Sampler
from stream.core.series import Model, Series, Terms, Window, WindowSet, refresh_figures
from stream.core.settings import Settings
from stream.core.settled import Settled
from stream.core.spill import StoreStatus

__all__ = ["ENTRY_BYTES", "OTHER", "SWEEP_EVERY_S", "Engine"]

ENTRY_BYTES = 100  # memory an entry of the join takes (a slot, a waiting label, an id listed in a bucket; a
# pending prediction is two: about 155 bytes measured), for ``join_memory_mb`` (README, "Labels that take months")


class Engine(Revisions, Ingest, Settled, Placement):
    def __init__(self, config: Settings, clock: Callable[[], float] | None = None, emit_partials: bool = False,
                 revisions: bool = True, limits_factor: int = 1, memory_share: float = 1.0, packed: bool = False
                 ) -> None:
        """``emit_partials``: emit each window's additive state (``Window.partial``) rather than a
        record, for another process to merge (``packed``: a replay's, which takes them pickled:
        ``WindowState.export``); ``limits_factor``: admit this many times the limits
        (where the limits themselves are applied after a merge); ``memory_share``: the part of
        ``join_memory_mb`` this engine's join may hold (one of several engines)."""
        self.config = config
        self.emit_partials = emit_partials
        self.packed = packed
        self.revisions = revisions  # records of windows before they are final (upserts)
        self.specs = [s for s in config.windows if s.timed]
        self.rolling_specs = [s for s in config.windows if not s.timed]
        self.rules = RuleBook(config.rules)
        self.detectors = DetectorBook(config.detectors, collect=emit_partials)
        self._ruled_windows = {rule.window for rule in config.rules}  # the windows rules read
        self.book = MetricBook(config.positive_classes, config.custom_metrics)
        self.join = JoinBuffer(config.join_ttl_s, SWEEP_EVERY_S, prediction_ts=pending_ts,
                               duplicate_labels=config.duplicate_labels, prediction_rank=self._prediction_rank,
                               max_entries=max(1, int(config.join_memory_mb * memory_share * (1 << 20) / ENTRY_BYTES)),
                               store_dir=config.join_store_dir or None, store_share=memory_share)
        self.health = Health()
        self.sampler = Sampler(config.sample)
        self.watermark = -math.inf
        self._reached = 0.0  # the last finite watermark: replay's clock at the end of input
        self.clock = clock or self._event_time  # (a method, not a closure: an engine can be saved, see core.persist)
        self.models: dict[str, Model] = {}
        self.admission = Admission(Limits.of(config, limits_factor))
        self._model_numbers = itertools.count()  # never reused: the join tells models apart by number
        self._refusals = Refusals(10 * config.max_models)  # refused models: a dead letter an hour each
        self.metric_records: list[dict[str, Any]] = []
        self.alert_events: list[dict[str, Any]] = []
        self.dead_letters: list[dict[str, Any]] = []
        # A window may take pairs until its end + TTL (+ one sweep of slack); predictions older
        # than the watermark by more than that are stale: every window of theirs is final.
        self._stale_after_s = config.join_ttl_s + SWEEP_EVERY_S
        self._lag_s = config.watermark_lag_s
        hops = [s.hop_s or s.size_s for s in self.specs if s.size_s]
        self._slot_s = float(math.gcd(*hops)) if hops else 1e300  # cumulative only: one slot
        self._series: dict[tuple[str, str, tuple[tuple[str, str], ...]], Series] = {}
        self._sets: dict[tuple[str, str, Any, int], WindowSet] = {}
        self._set_slots: list[tuple[int, tuple[str, str, Any, int]]] = []  # (slot, key) of ``_sets``, a heap
        self._set_numbers = itertools.count()
        self._numbered: dict[int, WindowSet] = {}  # the same sets, by number
        self._codec = PendingCodec()
        self._final_heap: list[tuple[float, int, Window]] = []
        self._seq = itertools.count()
        self._dirty_sets: list[WindowSet] = []
        self._buffered = 0  # pairs in window sets since the last fold
        self._dirty_windows: list[Window] = []
        self._next_sweep = -math.inf
        self._next_emit = -math.inf
        self.sweeps: list[float] | None = None  # a list: the watermark of every sweep is appended (sharded replay)

    # ----------------------------------------------------------------- input

    def dead_letter(self, source: str, raw: Any, reason: str, **where: Any) -> None:
        """Refuse an input record (counted as received and invalid) with a reason a person can act on."""
        if source == "predictions":
            self.health.predictions += 1
        elif source == "labels":
            self.health.labels += 1
        self._refuse(source, raw, reason, **where)

    def _refuse(self, source: str, raw: Any, reason: str, counted: bool = True, **where: Any) -> None:
        """A dead letter; ``counted``: the record's only outcome (invalid), else it counts elsewhere."""
        if counted and source == "predictions":
            self.health.invalid_predictions += 1
        elif counted and source == "labels":
            self.health.invalid_labels += 1
        self.dead_letters.append({"source": source, "reason": reason, "raw": raw, **where})

    def prediction(self, pred: Prediction, raw: Any = None, **where: Any) -> bool:
        """Count one prediction; ``raw`` and ``where`` (e.g. topic, offset) go into its dead letter
        if its model refuses it. True when it was taken in: neither a duplicate nor refused nor too
        old (what the Kafka worker must store to rebuild this state). Of a model's predictions for a
        request, the earliest stamped counts (ties by content), whatever the order they come in:
        one that wins over another that paired revises the pair."""
        try:
            model = self.models.get(pred.model) or self._model(pred.model, pred.timestamp)
            if model is None:
                self.health.predictions += 1
                self.health.invalid_predictions += 1  # refused: its dead letter went out within the hour
                return False
            classes = model.classes
            if classes is None:
                value: Any = target_number(pred.value)
            else:
                value = classes.ids.get(pred.value) if type(pred.value) is str else None  # the common case
                if value is None:
                    value = self._class_id(model, pred.value)
        except InvalidRecord as exc:
            self.dead_letter("predictions", raw if raw is not None else pred.request_id, str(exc), **where)
            return False
        self.health.predictions += 1
        ts = pred.timestamp
        if ts + self._stale_after_s <= self.watermark:
            self.health.expired_predictions += 1  # its windows are final already
            return False
        segment = pred.segment
        slot = int(ts // self._slot_s)
        wset = self._sets.get((model.name, pred.model_version, segment, slot))
        if wset is None:
            wset = self._window_set(model, pred.model_version, segment, slot, ts)
        entry = self._codec.pack(ts, wset.number, model.classes is None, value, pred.scores)
        outcome, other, label = self.join.add_prediction(pred.request_id, entry, model.number)
        if outcome is DUPLICATE:
            self.health.duplicate_predictions += 1
            return False
        wset.predictions += 1
        if not wset.dirty:
            wset.dirty = True
            self._dirty_sets.append(wset)
        if outcome is REPLACED:
            self.health.duplicate_predictions += 1
            self._count_prediction(self._numbered.get(self._codec.unpack(other)[1]), -1)  # type: ignore[arg-type]
            return True
        if outcome is REVISED:
            self._revise_prediction(entry, label, pred.request_id)  # type: ignore[arg-type]
            return True
        if outcome is not PENDING:
            status = self._resolve_label(label, [(outcome, entry)], pred.request_id)  # type: ignore[arg-type]
            if outcome is SHARED or outcome is SHARED_LATE:  # the label counts as its best outcome
                before = self._status(label, self.join.shared_with)  # type: ignore[arg-type]
                if LABEL_RANK[status] > LABEL_RANK[before]:
                    self._count_label(before, -1)
                    self._count_label(status, 1)
        return True

    def label(self, label: Label, **where: Any) -> bool:
        """Count one label; True unless it duplicates another one that wins over it (see
        ``duplicate_labels``). ``where`` (e.g. topic and offset, or file and line) goes into its
        dead letter if a model it pairs with refuses it."""
        self.health.labels += 1
        entry = pending_label(label.timestamp, label.value, where)
        outcome, matches, entry = self.join.add_label(label.request_id, entry)
        if outcome is DUPLICATE:
            self.health.duplicate_labels += 1
            return False
        if outcome is REVISED:  # it wins over the label its request paired with: that one's pairs go
            self.health.duplicate_labels += 1
            self._unresolve_label(*self.join.replaced, label.request_id)
        if outcome is LATE and not matches:
            self.health.late_labels += 1  # its prediction expired already
        elif outcome is not PENDING:
            self._resolve_label(entry, matches, label.request_id, **where)
        return True

    def _resolve_label(self, label: PendingLabel, matches: list[tuple[Any, PendingPrediction]],
                       request_id: str, **where: Any) -> str:
        """Pair a label with the predictions it met: each counts, or expires when the label came
        after its TTL or cannot count for its model. The label itself is counted once: joined if
        one pair counted, else late, else invalid (a dead letter with the reason), which it
        returns; a label another model's prediction met before (SHARED) was counted then (see
        ``prediction``)."""
        health = self.health
        counted = late = 0
        refused: tuple[str, PendingPrediction] | None = None
        shared = False
        for outcome, prediction in matches:
            shared = outcome is SHARED or outcome is SHARED_LATE
            if outcome is LATE or outcome is SHARED_LATE:
                health.expired_predictions += 1
                late += 1
                continue
            reason = self._pair(prediction, label, request_id)
            if reason is None:
                counted += 1
            elif refused is None:
                refused = (reason, prediction)
        if refused is not None:  # invalid for that model: its only outcome, unless it counts elsewhere
            self._refuse_label(label, *refused, request_id, counted=not (counted or late or shared), **where)
        if counted:
            if not shared:
                health.joined_labels += 1
            return "joined"
        if late:
            if not shared:
                health.late_labels += 1
            return "late"
        return "invalid"  # counted by its dead letter

    def receive(self, record: Prediction | Label, **where: Any) -> None:
        """One record in arrival order: advance event time to it, then count it; ``where`` it came
        from goes into its dead letter, if any. The per-record path that ``receive_many`` is
        tested against (``tests/unit/core/test_ingest.py``)."""
        if self.sampler.leaves_out(record, self.health):
            return  # left out by sampling: counted, and nothing else
        ts = record.timestamp
        if ts - self._lag_s > self.watermark or ts >= self._next_emit:
            self.observe(ts)
        if type(record) is Prediction:
            self.prediction(record, **where)
        else:
            self.label(record, **where)  # type: ignore[arg-type]

    # --------------------------------------------------------------- counting

    def _refuse_label(self, label: PendingLabel, reason: str, prediction: PendingPrediction, request_id: str,
                      counted: bool, **where: Any) -> None:
        """A dead letter for a label that cannot count for ``prediction``'s model, with where the
        label came from (the record at hand's, or what a label that waited kept)."""
        if not where and len(label) > 2:
            where = label[2]
        self._refuse("labels", {"request_id": request_id, "label": label[1], "timestamp": label[0]}, reason,
                     counted=counted, model=self._unpack(prediction)[1].model.name, request_id=request_id, **where)

    def _pair(self, prediction: PendingPrediction, label: PendingLabel, request_id: str,
              detected: bool = False) -> str | None:
        """Count a pair; or, when the label cannot count for the prediction's model, expire the
        prediction and return why. ``detected``: its detectors have it already (see ``Ingest``)."""
        ts, number, guess, names, probs = self._codec.unpack(prediction)
        wset = self._numbered.get(number)
        lag = label[0] - ts
        if wset is None:  # a revision after its windows closed (and its window set went): the join's count only
            self._count_pair(lag, 1)
            return None
        model = wset.model
        try:
            if model.classes is None:
                truth: Any = target_number(label[1])
            else:
                truth = model.classes.ids.get(label[1]) if type(label[1]) is str else None
                if truth is None:
                    truth = self._class_id(model, label[1])
        except InvalidRecord as exc:
            self.health.expired_predictions += 1  # its only label was unusable
            return str(exc)
        health = self.health  # as _count_pair, inline: the path of every pair
        health.pairs += 1
        health.label_lag_units += lag_units(lag)
        health.label_lag_buckets[bisect_left(LAG_BUCKETS_S, lag)] += 1
        terms: Terms = None
        if model.classes is None:
            wset.targets.update(truth, guess)  # type: ignore[union-attr]
        else:
            wset.codes.append((truth << CODE_BITS) | guess)
            if names is not None:
                log_loss, brier = wset.add_scores(model.classes.names[truth], names, probs)
                if self.rolling_specs:
                    terms = (log_loss, brier, dict(zip(names, probs, strict=True)))
        self._buffered += 1
        if not wset.dirty:
            wset.dirty = True
            self._dirty_sets.append(wset)
        if self.rolling_specs or (self.detectors.rules and not detected):
            done_ts = ts if ts > label[0] else label[0]  # completion order: the later of the two
            for series in wset.group:
                for rolling in series.rolling:
                    if rolling.push(done_ts, request_id, truth, guess, terms) and not rolling.dirty:
                        rolling.dirty = True
                        self._dirty_windows.append(rolling)
                if series.detectors and not detected:
                    self.detectors.push(done_ts, request_id, series.detectors, truth, guess,
                                        None if model.classes is None else model.classes.names)
        return None

    def _fold(self, closing: float = math.inf) -> None:
        """Move the buffered pairs into their windows, marking them for emission: every window
        set's, or with ``closing`` those of the sets a window of which may close at that watermark
        (the others wait: their windows' figures do not depend on when their pairs fold)."""
        dirty_sets, self._dirty_sets = self._dirty_sets, []
        if math.isinf(closing):
            self._buffered = 0
        else:
            self._dirty_sets = [wset for wset in dirty_sets if wset.final_from > closing]
            dirty_sets = [wset for wset in dirty_sets if wset.final_from <= closing]
        dirty_windows = self._dirty_windows
        for wset in dirty_sets:
            for window in wset.fold():
                if not window.dirty:
                    window.dirty = True
                    dirty_windows.append(window)

    # ---------------------------------------------------------------- output

    def observe(self, ts: float) -> None:
        """Event time moved to ``ts``: advance the watermark and flush on each emit interval."""
        self.advance(ts - self._lag_s)
        if ts >= self._next_emit:
            if self._next_emit != -math.inf:
                self.flush()
            interval = self.config.emit_interval_s
            self._next_emit = (ts // interval + 1) * interval

    def advance(self, watermark: float) -> None:
        """Move the watermark; once per sweep interval, expire join state and finalize windows."""
        if watermark > self.watermark:
            self.watermark = watermark
            if watermark >= self._next_sweep:
                self._sweep(watermark)
                if self.detectors.rules:  # the pairs completed before it are judged (see core.detector_book)
                    self.alert_events += self.detectors.advance(watermark, self._now()[0])

    def _sweep(self, watermark: float, emit: bool = True) -> None:
        """Expire join state and close the windows the watermark passed, each with its final
        record unless ``emit`` is off."""
        self._next_sweep = (watermark // SWEEP_EVERY_S + 1) * SWEEP_EVERY_S
        if self.sweeps is not None:
            self.sweeps.append(watermark)
        expired, orphaned = self.join.expire_counts(watermark)
        self.health.expired_predictions += expired
        self.health.orphaned_labels += orphaned
        heap = self._final_heap
        if heap and heap[0][0] <= watermark:
            self._fold(watermark)
            final: list[Window] = []
            while heap and heap[0][0] <= watermark:
                window = heapq.heappop(heap)[2]
                del window.series.windows[(window.spec, window.start)]
                window.dirty = False
                final.append(window)
            if emit:
                self._emit(final, True, self._now())
            horizon = watermark - self._stale_after_s
            slots = self._set_slots  # no pending prediction is older than the sets it drops
            while slots and (slots[0][0] + 1) * self._slot_s <= horizon:
                wset = self._sets.pop(heapq.heappop(slots)[1], None)
                if wset is not None:
                    self._numbered.pop(wset.number, None)
        if math.isinf(watermark) and emit:
            rolling = [r for series in self._series.values() for r in series.rolling if r.pairs]
            for window in rolling:
                window.dirty = False
            self._emit(rolling, True, self._now())

    def resume(self, watermark: float) -> None:
        """After a rebuild fed with stored records (at no watermark): jump to the watermark that was
        reached before, dropping the windows that were already final then, without emitting them
        again (their records may be gone from the store by now; their final records went out)."""
        self.watermark = watermark
        self._sweep(watermark, emit=False)

    def flush(self) -> None:
        """Emit one record per window that changed since the last flush. With ``revisions`` off,
        each window's one record comes when it is final, and a flush emits only the changed windows
        that rules read (their records go to the rules, so alerts come when they would live, and an
        adapter that writes final records only drops them): with no rules, pairs stay buffered in
        their window sets (a window's figures do not depend on when its pairs fold: its sums are
        exact) until ``FOLD_PAIRS`` wait."""
        revise = self.revisions or bool(self.rules.rules)
        if revise or self._buffered >= FOLD_PAIRS:
            self._fold()
        dirty, self._dirty_windows = self._dirty_windows, []
        dirty = [window for window in dirty if window.dirty]
        for window in dirty:
            window.dirty = False
        if not self.revisions:
            ruled = self._ruled_windows
            dirty = [window for window in dirty if window.spec.name in ruled]
        if revise and dirty:
            self._emit(dirty, False, self._now())

    def finish(self) -> None:
        """End of input: the watermark passes every window, so each one's last record is final."""
        self._reached = self.watermark if math.isfinite(self.watermark) else self._reached
        self._fold()
        self._dirty_windows.clear()  # every window is about to be emitted as final anyway
        self.advance(math.inf)

    def _event_time(self) -> float:
        """Replay's clock: the watermark, or the last finite one."""
        return self.watermark if math.isfinite(self.watermark) else self._reached

    def _now(self) -> tuple[float, str]:
        """The clock, and as RFC 3339: one reading stamps all the records of one flush."""
        now = self.clock()
        return now, rfc3339(now)

    def _emit(self, windows: Sequence[Window], final: bool, now: tuple[float, str]) -> None:
        """A record per window, in order; the figures of those whose pairs changed are computed
        together (``merge.record_figures_many``)."""
        if self.emit_partials:  # a Kafka worker's partition engine: the merger makes the records
            self.metric_records.extend(window.partial(final, self.packed) for window in windows)
            return
        refresh_figures(windows, self.book)
        for window in windows:
            series = window.series
            record = assemble(series.model, series.model_version, series.segment, window.spec.describe(window.start),
                              window.predictions, window.figures, final, now[1],  # type: ignore[arg-type]
                              self.config.sample)
            self.metric_records.append(record)
            self.alert_events.extend(self.rules.evaluate(record, series.segment_key, now[0]))

    # ---------------------------------------------------------------- status

    def pending(self) -> tuple[int, int]:
        return self.join.pending()

    def store_status(self) -> StoreStatus:
        """What the join holds on disk (``join_memory_mb``, ``core.spill``)."""
        return self.join.status()

    def balance(self) -> dict[str, int]:
        return self.health.balance(*self.pending())

