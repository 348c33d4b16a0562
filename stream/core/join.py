"""Pair predictions with labels by request id, in either arrival order, within a TTL.

Rules: a label more than ``ttl_s`` after its prediction is *late* (not joined);
a prediction with no label by ``ts + ttl_s`` is *expired*; a label with no prediction by
``ts + ttl_s`` is *orphaned*. Of a model's predictions for a request the one that ranks least
(``prediction_rank``: the earliest) wins, and of a request's labels the rule ``duplicate_labels``
picks the winner from their timestamps and values alone (``earliest``, the default, or ``latest``
timestamp, ties broken by the value: ``label_rank``), never from their arrival order; the others
are *duplicates*. A winner that arrives after its request paired with another record *revises*
the pair (``Outcome.REVISED``: the caller undoes the old pair, ``replaced``, and counts the new
one), until the watermark passes the pair's deadline (the later of its timestamps plus ``ttl_s``).
Outcomes depend on timestamps only, never on when a sweep runs, so the replay engine and the Kafka
worker count the same input the same way.

Resolved ids leave a small tombstone (id -> state) until a TTL after their deadline (about
``2 * ttl_s`` after their time), so duplicates and late labels are recognised; expiry is swept by
time buckets (``core.sweep``: one list slot per entry, handed on whole to the tombstone buckets),
not a heap of tuples.

With ``max_entries``, the state of requests beyond it goes to disk (``core.ondisk``), whole
buckets at a time, those due soonest first, and comes back when a record of the request does
(``hold`` brings a batch's back in one read) or when its bucket is due. Where a request's state
lives never changes an outcome (``tests/unit/core/test_spill.py``).

Entries are opaque to the buffer, except for their event time: by default an entry is a tuple
whose first item is its timestamp; ``prediction_ts`` reads it from another form of prediction
entry (the engine packs its pending predictions into bytes). Any entry but an ``int`` or a tuple
that starts with ``PAIRED``.

>>> jb = JoinBuffer(ttl_s=100)
>>> jb.add_label("r1", (5.0, "cat"))[0] is Outcome.PENDING
True
>>> outcome, prediction, label = jb.add_prediction("r1", (1.0, "dog"))
>>> outcome.name, prediction, label
('JOINED', (1.0, 'dog'), (5.0, 'cat'))
>>> jb.add_label("r1", (6.0, "cat"))[0].name
'DUPLICATE'
>>> outcome, matches, label = jb.add_label("r1", (4.0, "dog"))  # earlier: it wins
>>> outcome.name, matches, jb.replaced
('REVISED', [(<Outcome.JOINED: 'joined'>, (1.0, 'dog'))], ((5.0, 'cat'), [(<Outcome.JOINED: 'joined'>, (1.0, 'dog'))]))
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from operator import itemgetter
from typing import Any

from stream.core.buckets import Buckets
from stream.core.ids import Key, compact_id
from stream.core.slots import PAIRED, TOMB_EXPIRED, TOMB_JOINED, TOMB_ORPHANED, Entry, Pair, PKey, is_pair, pair
from stream.core.spill import SpillStore
from stream.core.sweep import Sweeps
from stream.core.windows import SWEEP_EVERY_S

__all__ = ["DUPLICATE_LABEL_RULES", "SWEEP_EVERY_S", "Entry", "JoinBuffer", "Key", "Outcome", "PKey", "is_pair",
           "label_rank"]

DUPLICATE_LABEL_RULES = ("earliest", "latest")



class Outcome(Enum):
    PENDING = "pending"
    JOINED = "joined"
    DUPLICATE = "duplicate"
    LATE = "late"  # the label came after the TTL; its prediction is expired at once
    SHARED = "shared"  # joined with a label that joined another model's prediction before
    SHARED_LATE = "shared_late"  # the same, but the label came after this prediction's TTL
    REVISED = "revised"  # a label or prediction that wins over the one its request paired with (``replaced``)
    REPLACED = "replaced"  # a prediction that wins over its model's pending one for the request


# Module-level aliases: a global lookup is several times cheaper than Enum attribute access.
PENDING, JOINED, DUPLICATE, LATE = Outcome.PENDING, Outcome.JOINED, Outcome.DUPLICATE, Outcome.LATE
SHARED, SHARED_LATE, REVISED, REPLACED = Outcome.SHARED, Outcome.SHARED_LATE, Outcome.REVISED, Outcome.REPLACED

_NOTHING: tuple[Outcome, None, None] = (Outcome.PENDING, None, None)


def label_rank(entry: Entry) -> tuple[float, str, str]:
    """How labels of one request compare: by timestamp, ties by the value's type and ``repr`` (a
    total order on the record's content, so the same labels give the same winner in any order).

    >>> sorted([(2.0, "b"), (1.0, "z"), (2.0, "a"), (2.0, 1)], key=label_rank)
    [(1.0, 'z'), (2.0, 1), (2.0, 'a'), (2.0, 'b')]
    """
    value = entry[1]
    return entry[0], type(value).__name__, repr(value)


class JoinBuffer(Sweeps):
    """Pending predictions and the state of resolved ids share one dict (``ids``): a join or an
    expiry overwrites the slot the id already has, and a new prediction is one lookup.

    Several models may predict for one request: each model's first prediction pairs with the
    request's winning label. The engine numbers its models; model 0's state sits under the
    request's key alone, another model's under (key, model), and ``others`` lists those models per
    request, so the common one-model case costs no more. A prediction that paired keeps its label
    in its slot (``is_pair``) until the later of their timestamps plus the TTL, for other models'
    predictions and for a label that wins over it; then the slot becomes a tombstone."""

    def __init__(self, ttl_s: float, bucket_s: float = 60.0,
                 prediction_ts: Callable[[Any], float] = itemgetter(0), duplicate_labels: str = "earliest",
                 prediction_rank: Callable[[Any], Any] = lambda entry: entry, max_entries: int = 0,
                 store_dir: str | None = None, store_share: float = 1.0) -> None:
        if duplicate_labels not in DUPLICATE_LABEL_RULES:
            raise ValueError(f"duplicate_labels is one of {', '.join(DUPLICATE_LABEL_RULES)}, not {duplicate_labels!r}")
        self.ttl_s = ttl_s
        self.latest_wins = duplicate_labels == "latest"
        self.prediction_ts = prediction_ts
        self.prediction_rank = prediction_rank  # of a model's predictions for a request, the least wins
        self.ids: dict[PKey, Any] = {}  # a pending prediction (an entry), a pair (``is_pair``), or an int state
        self.labels: dict[Key, Entry] = {}  # labels waiting for their prediction
        self.others: dict[Key, list[int]] = {}  # models other than 0 with state under a request
        self.several = False  # set by the engine once it sees a second model
        self.pending_predictions = 0
        self.pairs = 0  # slots in ``ids`` that hold a pair
        # What the last call replaced (REVISED: the old label and its matches) or shared with
        # (SHARED: the request's other matches); read by the caller right after the call.
        self.replaced: tuple[Entry, list[tuple[Outcome, Entry]]] = ((0.0, None), [])
        self.shared_with: list[tuple[Outcome, Entry]] = []
        self._prediction_due = Buckets(bucket_s, 0)
        self._label_due = Buckets(bucket_s, 1)
        self._tombstone_due = Buckets(bucket_s, 2)
        # State beyond memory (see the module): at most ``max_entries`` slots and waiting labels
        # in memory between batches (0: no bound), the rest in ``store``, made when first needed.
        self.max_entries = max_entries
        self.store_dir = store_dir
        self.store_share = store_share  # of the process's store buffers (one of several joins)
        self.store: SpillStore | None = None
        self.stored = 0  # requests whose state is on disk
        self.stored_labels = 0  # of those, the ones with a label waiting
        self.stored_predictions = 0  # pending predictions on disk
        self._held = 0  # batches under way (``hold``): nothing moves to disk meanwhile
        self.unlisted: list[tuple[int, PKey]] = []  # (bucket, id): listings on disk to remove (``_relist``)
        self.tombstones_stored = False  # lone tombstones went to disk (not counted in ``stored``)

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Loaded back (``core.persist``): pairs' slots get the marker itself again (told by identity)."""
        self.__dict__.update(state)
        ids = self.ids
        for key, slot in ids.items():
            if type(slot) is tuple and slot and slot[0] == PAIRED and slot[0] is not PAIRED:
                ids[key] = (PAIRED, *slot[1:])

    def add_prediction(self, request_id: str, entry: Entry, model: int = 0
                       ) -> tuple[Outcome, Entry | None, Entry | None]:
        """Model ``model``'s prediction: (outcome, it, the label it joined). When it pairs with a
        label that paired with another model's prediction before (SHARED), ``shared_with`` lists
        those pairs. Of a model's predictions for a request the one that ranks least
        (``prediction_rank``: its timestamp first) wins, whatever the order they come in: one that
        wins over a pending one is REPLACED (it, the one it replaced, None); over one that paired,
        REVISED (it, the label; ``replaced`` holds the label and the old pair, ``shared_with`` the
        request's other models' pairs)."""
        key = compact_id(request_id)
        if self.max_entries:
            self._ready(key)
        pkey = (key, model) if model else key
        ids = self.ids
        known = ids.get(pkey)
        if known is not None and known != TOMB_ORPHANED:
            kind = type(known)
            if kind is int:
                return Outcome.DUPLICATE, None, None  # expired, or its pair can no longer change
            rank = self.prediction_rank
            if kind is tuple and known[0] is PAIRED:
                if rank(entry) >= rank(known[1]):
                    return Outcome.DUPLICATE, None, None
                return self._revise_prediction(key, pkey, known, entry)
            if rank(entry) >= rank(known):
                return Outcome.DUPLICATE, None, None
            ids[pkey] = entry
            self._prediction_due.add(self.prediction_ts(entry) + self.ttl_s, pkey)
            return REPLACED, known, None
        if model and ids.get(key) == TOMB_ORPHANED:
            del ids[key]  # gone, as model 0's prediction replaces it: alike whatever number its model has
        label = None
        shared: list[tuple[Outcome, Entry]] = []
        if self.labels:
            label = self.labels.pop(key, None)
        if label is None and self.several:
            pairs = self._pairs(key)
            if pairs:
                label = pairs[0][1][2:]
                shared = [(LATE if slot[2] - self.prediction_ts(slot[1]) > self.ttl_s else JOINED, slot[1])
                          for _, slot in pairs]
        if model:
            self.others.setdefault(key, []).append(model)
        if label is not None:
            ts = self.prediction_ts(entry)
            ids[pkey] = pair(entry, label)
            self.pairs += 1
            self._prediction_due.add((ts if ts > label[0] else label[0]) + self.ttl_s, pkey)
            late = label[0] - ts > self.ttl_s
            if shared:
                self.shared_with = shared
                return (SHARED_LATE if late else SHARED), entry, label
            return (LATE if late else JOINED), entry, label
        ids[pkey] = entry
        self.pending_predictions += 1
        self._prediction_due.add(self.prediction_ts(entry) + self.ttl_s, pkey)
        return _NOTHING

    def add_label(self, request_id: str, entry: Entry) -> tuple[Outcome, list[tuple[Outcome, Entry]], Entry]:
        """A label: (outcome, [(JOINED or LATE, prediction)] for each model's pending prediction
        of the request, it). The outcome is JOINED if one joined, LATE if it came after the TTL of
        every prediction it met (or of one already expired), else PENDING or DUPLICATE; REVISED
        when it wins over the label its request paired with: the matches are the predictions that
        paired with that one, and ``replaced`` holds (that label, its matches)."""
        key = compact_id(request_id)
        if self.max_entries:
            self._ready(key)
        ids = self.ids
        if not self.several:  # one model: its prediction's slot alone (the common case, kept short)
            known = ids.get(key)
            if known is not None:
                kind = type(known)
                if kind is tuple and known[0] is PAIRED:
                    return self._contest((key,), entry)
                if kind is not int:
                    ids[key] = pair(known, entry)
                    self.pairs += 1
                    self.pending_predictions -= 1
                    self._relist(key, known, entry)
                    outcome = LATE if entry[0] - self.prediction_ts(known) > self.ttl_s else JOINED
                    return outcome, [(outcome, known)], entry
        waiting = self.labels.get(key) if self.labels else None
        if waiting is not None:
            if self._wins(entry, waiting):  # the pending label is replaced; its deadline moves with it
                self.labels[key] = entry
                self._label_due.add(entry[0] + self.ttl_s, key)
            return Outcome.DUPLICATE, [], entry
        others = self.others.get(key)
        pkeys = [key, *((key, model) for model in others)] if others else (key,)
        pending = []
        expired = False
        for pkey in pkeys:
            known = ids.get(pkey)
            if known is None:
                continue
            kind = type(known)
            if kind is tuple and known[0] is PAIRED:
                return self._contest(pkeys, entry)
            if kind is not int:
                pending.append(pkey)
            elif known == TOMB_EXPIRED:
                expired = True
            else:  # joined, or an earlier label was orphaned
                return Outcome.DUPLICATE, [], entry
        if pending:
            matches = []
            prediction_ts, ttl = self.prediction_ts, self.ttl_s
            for pkey in pending:
                prediction = ids[pkey]
                ids[pkey] = pair(prediction, entry)
                self.pairs += 1
                self._relist(pkey, prediction, entry)
                matches.append((LATE if entry[0] - prediction_ts(prediction) > ttl else JOINED, prediction))
            self.pending_predictions -= len(pending)
            return (JOINED if any(m[0] is JOINED for m in matches) else LATE), matches, entry
        if expired:
            for pkey in pkeys:
                if ids.get(pkey) == TOMB_EXPIRED:
                    ids[pkey] = TOMB_JOINED  # any further label is a duplicate
            return Outcome.LATE, [], entry
        self.labels[key] = entry
        self._label_due.add(entry[0] + self.ttl_s, key)
        return Outcome.PENDING, [], entry

    def insert_prediction(self, key: Key, model: int, entry: Entry, ts: float) -> bool:
        """The common case of ``add_prediction`` for a batch: the request has no state yet (no
        prediction of any model, no label): ``entry`` waits, and True. False, with nothing changed,
        when ``add_prediction`` must judge it."""
        pkey = (key, model) if model else key
        ids = self.ids
        if pkey in ids or (self.labels and key in self.labels) or (self.several and not self._first_model(key, model)):
            return False
        ids[pkey] = entry
        self.pending_predictions += 1
        self._prediction_due.add(ts + self.ttl_s, pkey)
        return True

    def insert_label(self, key: Key, entry: Entry) -> bool:
        """The common case of ``add_label`` for a batch: the request has no state yet (no
        prediction of any model, no label, no mark of either): ``entry`` waits, and True. False,
        with nothing changed, when ``add_label`` must judge it."""
        if key in self.ids or (self.labels and key in self.labels) or (self.others and key in self.others):
            return False
        self.labels[key] = entry
        self._label_due.add(entry[0] + self.ttl_s, key)
        return True

    def pair_waiting(self, key: Key, model: int, entry: Entry, ts: float) -> Entry | None:
        """The other common case of ``add_prediction`` for a batch: the request's label waits, and
        no prediction of any model came: they pair, and the label is returned (JOINED or LATE by
        their timestamps). None, with nothing changed, when ``add_prediction`` must judge it."""
        pkey = (key, model) if model else key
        ids = self.ids
        if not self.labels or pkey in ids or key not in self.labels or (
                self.several and not self._first_model(key, model)):
            return None
        label = self.labels.pop(key)
        ids[pkey] = pair(entry, label)
        self.pairs += 1
        self._prediction_due.add((ts if ts > label[0] else label[0]) + self.ttl_s, pkey)
        return label

    def _first_model(self, key: Key, model: int) -> bool:
        """(With several models.) Whether no model has state under the request; if so, ``model``
        is noted as having some now (``others``), as ``add_prediction`` notes it."""
        if key in self.others or (model and key in self.ids):
            return False
        if model:
            self.others[key] = [model]
        return True

    def pair_pending(self, key: Key, entry: Entry) -> Entry | None:
        """The common case of ``add_label`` for a batch: the request's one prediction waits for it;
        they pair, and the prediction is returned (JOINED or LATE by their timestamps, as
        ``add_label`` judges). None, with nothing changed, when ``add_label`` must judge it."""
        ids = self.ids
        pkey: PKey = key
        if self.several:
            models = self.others.get(key)
            if models is not None:
                if len(models) != 1 or key in ids:
                    return None
                pkey = (key, models[0])
        known = ids.get(pkey)
        if known is None or type(known) is int or (type(known) is tuple and known[0] is PAIRED):
            return None
        ids[pkey] = pair(known, entry)
        self.pairs += 1
        self.pending_predictions -= 1
        self._relist(pkey, known, entry)
        return known

    def _revise_prediction(self, key: Key, pkey: PKey, slot: Pair, entry: Entry
                           ) -> tuple[Outcome, Entry | None, Entry | None]:
        prediction_ts, ttl = self.prediction_ts, self.ttl_s
        label, old = slot[2:], slot[1]
        self.replaced = (label, [(LATE if label[0] - prediction_ts(old) > ttl else JOINED, old)])
        self.shared_with = [(LATE if other[2] - prediction_ts(other[1]) > ttl else JOINED, other[1])
                            for other_key, other in self._pairs(key) if other_key != pkey]
        self.ids[pkey] = (PAIRED, entry, *label)
        ts = prediction_ts(entry)
        self._prediction_due.add((ts if ts > label[0] else label[0]) + ttl, pkey)
        return REVISED, entry, label

    def _relist(self, pkey: PKey, prediction: Entry, label: Entry, old: Entry | None = None) -> None:
        """A pair is listed in the bucket of its deadline (the later of its timestamps plus the
        TTL), so that the sweep of its prediction's bucket (or of its old label's) need not
        read it: a prediction that pairs, or a pair whose label changed (``old``), is listed
        there, and its listing in its prediction's bucket, if on disk, removed."""
        ts, ttl, bucket_s = self.prediction_ts(prediction), self.ttl_s, self._prediction_due.bucket_s
        before = int(((ts if old is None or ts > old[0] else old[0]) + ttl) // bucket_s)
        deadline = (ts if ts > label[0] else label[0]) + ttl
        if int(deadline // bucket_s) != before:
            self._prediction_due.add(deadline, pkey)
            if old is None and before in self._prediction_due.on_disk:
                self.unlisted.append((before, pkey))

    def _wins(self, new: Entry, old: Entry) -> bool:
        if self.latest_wins:
            return label_rank(new) > label_rank(old)
        return label_rank(new) < label_rank(old)

    def _pairs(self, key: Key) -> list[tuple[PKey, Pair]]:
        """The request's predictions that paired and can still be revised, with their keys."""
        others = self.others.get(key)
        ids = self.ids
        pkeys = [key, *((key, model) for model in others)] if others else (key,)
        return [(pkey, ids[pkey]) for pkey in pkeys if is_pair(ids.get(pkey))]

    def _contest(self, pkeys: Any, entry: Entry) -> tuple[Outcome, list[tuple[Outcome, Entry]], Entry]:
        """Another label of a request that paired: a duplicate, or the winner (REVISED)."""
        ids = self.ids
        joined = [(pkey, ids[pkey]) for pkey in pkeys if is_pair(ids.get(pkey))]
        old = joined[0][1][2:]
        if not self._wins(entry, old):
            return Outcome.DUPLICATE, [], entry
        prediction_ts, ttl = self.prediction_ts, self.ttl_s
        old_matches, matches = [], []
        for pkey, slot in joined:
            ts = prediction_ts(slot[1])
            old_matches.append((LATE if old[0] - ts > ttl else JOINED, slot[1]))
            matches.append((LATE if entry[0] - ts > ttl else JOINED, slot[1]))
            ids[pkey] = pair(slot[1], entry)
            self._relist(pkey, slot[1], entry, old)
        self.replaced = (old, old_matches)
        return REVISED, matches, entry

    def pending(self) -> tuple[int, int]:
        """(predictions, labels) waiting for their other half, in memory or on disk."""
        return self.pending_predictions, len(self.labels) + self.stored_labels
