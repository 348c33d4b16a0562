"""The part of the join that moves state beyond its memory budget to disk and back (see
``core.spill`` for the store, ``core.join`` for the rules the state follows wherever it is).

A request's whole state (its models' slots, a waiting label, the models it has) is in memory or on
disk, never split. ``JoinBuffer`` holds a batch's requests in memory from ``hold`` to
``release``, and brings one request's back before any record of it outside a batch (``_ready``)
and a due bucket's before its sweep (``_load``). A state that is nothing but model 0's tombstone
(most resolved requests) is stored under its own key (``_TOMB`` and the request's), so that its
removal, a TTL later, is a write without a read (``_bury_on_disk``).
"""

from __future__ import annotations

import itertools
import pickle
from collections.abc import Iterable
from typing import Any, cast

from stream.core.buckets import Buckets, pkey_bytes, request_keys
from stream.core.ids import Key
from stream.core.slots import PAIRED, PKey
from stream.core.spill import Reads, SpillStore, StoreStatus, key_bytes

__all__ = ["OnDisk"]

_TOMB = b"t"  # before a request's key: its state is a lone tombstone
WRITE_BATCH = 4096  # states written at a time: what a large move to disk holds at once stays small


class OnDisk:
    """``JoinBuffer``'s state beyond ``max_entries`` entries, on disk."""

    ids: dict[PKey, Any]
    labels: dict[Key, Any]
    others: dict[Key, list[int]]
    max_entries: int
    store_dir: str | None
    store_share: float
    store: SpillStore | None
    stored: int
    stored_labels: int
    stored_predictions: int
    pairs: int
    _held: int
    unlisted: list[tuple[int, PKey]]
    tombstones_stored: bool
    _prediction_due: Buckets
    _label_due: Buckets
    _tombstone_due: Buckets

    def hold(self, keys: Iterable[Key]) -> None:
        """A batch begins: the state of ``keys`` comes back from disk (one read), and nothing
        moves to disk until ``release``. The batch paths (``insert_prediction`` and the others)
        need their keys held."""
        self._held += 1
        self._load(keys)

    def release(self) -> None:
        """A batch ended: state beyond ``max_entries`` moves to disk."""
        self._held -= 1
        self._bound()

    def _bound(self) -> None:
        """Outside a batch, move state beyond ``max_entries`` to disk."""
        if self.max_entries and not self._held and self.in_memory() > self.max_entries:
            self._spill()

    def in_memory(self) -> int:
        """Entries held in memory: slots (a pair counts three: it holds a prediction and a label's
        time and value), waiting labels, and ids in the time buckets' lists."""
        return (len(self.ids) + 2 * self.pairs + len(self.labels) + self._prediction_due.count
                + self._label_due.count + self._tombstone_due.count)

    def on_disk(self) -> tuple[int, int]:
        """(predictions, labels) waiting for their other half on disk (of ``pending``)."""
        return self.stored_predictions, self.stored_labels

    def status(self) -> StoreStatus:
        """What is on disk: pending requests, the store's size, how long its reads took."""
        if self.store is None:
            return StoreStatus()
        reads = self.store.reads
        return StoreStatus(self.on_disk(), self.store.disk_bytes(), Reads(list(reads.counts), reads.sum_s))

    def _ready(self, key: Key) -> None:
        """Before a record of ``key`` outside a batch: state beyond the bound moves to disk, then
        the request's comes back."""
        self._bound()
        self._load((key,))

    def _load(self, keys: Iterable[Key], keep: bool = False, tombstones: bool = True) -> tuple[list[Key], set[Key]]:
        """Bring the state of ``keys`` that is on disk back to memory: (their keys, those of them
        that were lone tombstones). With ``keep``, the copies on disk stay, for
        ``_store_states(..., kept=...)`` to overwrite; without ``tombstones``, a state that is a lone
        tombstone stays on disk."""
        back: list[Key] = []
        from_tombs: set[Key] = set()
        if self.store is None:
            return back, from_tombs
        ids, labels, others = self.ids, self.labels, self.others
        wanted = [key for key in dict.fromkeys(keys) if key not in ids and key not in labels and key not in others]
        if not wanted:
            return back, from_tombs
        names = [key_bytes(key) for key in wanted]
        tombs = tombstones and self.tombstones_stored
        found = self.store.take_states([*names, *(_TOMB + name for name in names)] if tombs else names, keep)
        for i, key in enumerate(wanted):
            value = found[i]
            if value is None:
                if tombs and (tomb := found[len(wanted) + i]) is not None:
                    back.append(key)
                    ids[key] = tomb[0]
                    from_tombs.add(key)
                continue
            back.append(key)
            slots, label, models = pickle.loads(value)
            for model, slot in slots:
                if type(slot) is tuple and slot and slot[0] == PAIRED:
                    slot = (PAIRED, *slot[1:])  # the marker is told by identity
                    self.pairs += 1
                elif type(slot) is not int:
                    self.stored_predictions -= 1
                ids[(key, model) if model else key] = slot
            if models is not None:
                others[key] = models
            if label is not None:
                labels[key] = label
                self.stored_labels -= 1
            self.stored -= 1
        return back, from_tombs

    def _bury_on_disk(self, request_ids: list[PKey]) -> None:
        """Remove the lone tombstones on disk of ``request_ids`` without reading them: what
        ``_bury`` does to them (a request's state that is more than that comes back to be buried)."""
        if self.tombstones_stored and self.store is not None:
            ids, labels, others = self.ids, self.labels, self.others
            keys = [pkey for pkey in request_ids if type(pkey) is not tuple]  # model 0's: a lone tombstone's
            self.store.remove_states([_TOMB + key_bytes(key) for key in cast(list[Key], keys)
                                      if key not in ids and key not in labels and key not in others])

    def _unlist(self) -> None:
        """Remove from the prediction lists on disk the listings ``unlisted`` names: those of
        predictions that paired since, which their sweep would pass over (``JoinBuffer._relist``).
        Before the lists on disk are read or written again."""
        if self.unlisted:
            self.store.unlist(0, [(bucket, pkey_bytes(pkey)) for bucket, pkey in self.unlisted])  # type: ignore[union-attr]
            self.unlisted.clear()

    def _spill(self) -> None:
        """Move whole buckets to disk, those due soonest first (of all three lists), with the
        state of every request they list, until three quarters of ``max_entries`` stay."""
        if self.store is None:
            self.store = SpillStore(self.store_dir, self.store_share)
        self._unlist()
        target = self.max_entries * 3 // 4
        lists = (self._prediction_due, self._label_due, self._tombstone_due)
        candidates = sorted((bucket, kind) for kind, buckets in enumerate(lists) for bucket in buckets.by_bucket)
        ids, labels = self.ids, self.labels
        for bucket, kind in candidates:
            if self.in_memory() <= target:
                break
            self._store_states(request_keys(lists[kind].spill(bucket, self.store)))
        excess = self.in_memory() - target
        if excess > 0:  # state that came back while its buckets stay on disk: the longest held first
            keys = [*itertools.islice(request_keys(ids), excess), *itertools.islice(labels, excess)]
            self._store_states(keys[:excess])

    def _store_states(self, keys: Iterable[Key], kept: set[Key] | None = None) -> None:
        """Move the state of ``keys`` that is in memory to disk. With ``kept`` (``keys`` came back
        with ``_load(..., keep=True)``, and ``kept`` is the set of those that were lone tombstones),
        remove the copies that this write does not replace. A lone tombstone (model 0's, nothing
        else) is stored apart, for ``_bury_on_disk``."""
        ids, labels, others = self.ids, self.labels, self.others
        items = []
        tombs = []
        gone = []
        stored = stored_labels = 0
        dumps, highest = pickle.dumps, pickle.HIGHEST_PROTOCOL
        for key in dict.fromkeys(keys):
            name = key_bytes(key)
            models = others.pop(key, None) if others else None
            slot = ids.pop(key, None)
            label = labels.pop(key, None)
            if type(slot) is int and models is None and label is None:
                tombs.append((_TOMB + name, bytes((slot,))))
                if kept is not None and key not in kept:
                    gone.append(name)
                continue
            slots = [] if slot is None else [(0, slot)]
            for model in models or ():
                slot = ids.pop((key, model), None)
                if slot is not None:
                    slots.append((model, slot))
            for _, slot in slots:
                if type(slot) is not int:
                    if type(slot) is tuple and slot[0] is PAIRED:
                        self.pairs -= 1
                    else:
                        stored += 1
            if kept is not None and key in kept:
                gone.append(_TOMB + name)
            if not slots and label is None and models is None:
                if kept is not None and key not in kept:
                    gone.append(name)
                continue
            items.append((name, dumps((slots, label, models), highest)))
            if label is not None:
                stored_labels += 1
            if len(items) == WRITE_BATCH:
                self._put(items)
                items = []
        self._put(items)
        self.stored_predictions += stored
        self.stored_labels += stored_labels
        if tombs:
            self.store.put_states(tombs)  # type: ignore[union-attr]
            self.tombstones_stored = True
        if gone:
            self.store.remove_states(gone)  # type: ignore[union-attr]

    def _put(self, items: list[tuple[bytes, bytes]]) -> None:
        if items:
            self.store.put_states(items)  # type: ignore[union-attr]
            self.stored += len(items)
