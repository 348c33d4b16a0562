"""The join's sweeps: what the watermark resolves, a time bucket at a time (see ``core.join``
for the rules, ``core.buckets`` for the lists).

Each list is swept once the watermark passes a bucket's end: a pending prediction expires, a
waiting label is orphaned, a pair whose deadline passed becomes a tombstone; each resolved id
is then listed for its tombstone's removal a TTL after its bucket. A pair is listed in the
bucket of its own deadline (the later of its timestamps plus the TTL) from the moment it pairs
(``JoinBuffer._relist``), so the sweep of its prediction's bucket passes over it: one that has
paired is no longer there, on disk, to read back. State on disk comes back for a bucket's sweep
and goes back after it; a lone tombstone is removed without being read
(``OnDisk._bury_on_disk``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, cast

from stream.core.buckets import Buckets, request_keys
from stream.core.ids import Key
from stream.core.ondisk import OnDisk
from stream.core.slots import PAIRED, TOMB_EXPIRED, TOMB_JOINED, TOMB_ORPHANED, Entry, PKey

__all__ = ["Sweeps"]


class Sweeps(OnDisk):
    """``JoinBuffer``'s expiry: ``expire`` and ``expire_counts``."""

    ttl_s: float
    pending_predictions: int
    prediction_ts: Callable[[Any], float]
    _prediction_due: Buckets
    _label_due: Buckets
    _tombstone_due: Buckets

    def pending(self) -> tuple[int, int]:
        raise NotImplementedError

    def expire(self, watermark: float) -> tuple[list[Entry], list[Entry]]:
        """Resolve what the watermark has passed: (expired predictions, orphaned labels); a pair
        whose deadline passed becomes a tombstone."""
        expired: list[Entry] = []
        orphaned: list[Entry] = []
        self._expire(watermark, expired.append, orphaned.append)
        return expired, orphaned

    def expire_counts(self, watermark: float) -> tuple[int, int]:
        """``expire``, counting (expired predictions, orphaned labels) rather than keeping them.
        At the end of input (an infinite watermark) every pending prediction expires and every
        waiting label is orphaned: they are counted, and the state dropped, with nothing read
        back from disk (``expire`` reads it all)."""
        if watermark == math.inf:
            return self._expire_all()
        counts = [0, 0]

        def expired(_: Entry) -> None:
            counts[0] += 1

        def orphaned(_: Entry) -> None:
            counts[1] += 1

        self._expire(watermark, expired, orphaned)
        return counts[0], counts[1]

    def _expire(self, watermark: float, expired: Callable[[Entry], None], orphaned: Callable[[Entry], None]) -> None:
        ttl = self.ttl_s
        ids = self.ids
        prediction_ts = self.prediction_ts
        tombstones = self._tombstone_due
        bucket_s = self._prediction_due.bucket_s
        resolved = 0
        self._unlist()
        for bucket_end, request_ids, on_disk in self._prediction_due.due(watermark, self.store):
            back, tombs = self._load(request_keys(request_ids), keep=True)
            bucket = round(bucket_end / bucket_s) - 1
            elsewhere: set[PKey] | None = None  # pairs listed in their own deadline's bucket: not here
            for request_id in request_ids:
                entry = ids.get(request_id)
                if entry is None or type(entry) is int:
                    continue
                if type(entry) is tuple and entry[0] is PAIRED:
                    ts = prediction_ts(entry[1])
                    if int(((ts if ts > entry[2] else entry[2]) + ttl) // bucket_s) > bucket:
                        if elsewhere is None:
                            elsewhere = set()
                        elsewhere.add(request_id)
                        continue
                    ids[request_id] = TOMB_JOINED
                    self.pairs -= 1
                elif prediction_ts(entry) + ttl < watermark:
                    ids[request_id] = TOMB_EXPIRED
                    expired(entry)
                    resolved += 1
            if elsewhere is not None:
                request_ids = [request_id for request_id in request_ids if request_id not in elsewhere]
            self._entomb(bucket_end + ttl, request_ids, watermark, on_disk)
            self._store_states(back, kept=tombs)  # what came from disk to be swept goes back there
        self.pending_predictions -= resolved
        labels = self.labels
        for bucket_end, request_ids, on_disk in self._label_due.due(watermark, self.store):
            back, tombs = self._load(request_keys(request_ids), keep=True)
            for request_id in cast(list[Key], request_ids):  # labels are per request, never per model
                entry = labels.get(request_id)
                if entry is not None and entry[0] + ttl < watermark:
                    del labels[request_id]
                    orphaned(entry)
                    ids[request_id] = TOMB_ORPHANED  # a waiting label means no state under its id
            self._entomb(bucket_end + ttl, request_ids, watermark, on_disk)
            self._store_states(back, kept=tombs)
        for _, request_ids, _ in tombstones.due(watermark, self.store):
            back, tombs = self._load(request_keys(request_ids), keep=True, tombstones=False)
            self._bury_on_disk(request_ids)
            self._bury(request_ids)
            self._store_states(back, kept=tombs)
        self._bound()

    def _expire_all(self) -> tuple[int, int]:
        """The end of input: (pending predictions, waiting labels), then the join is empty."""
        counts = self.pending()
        self.ids.clear()
        self.labels.clear()
        self.others.clear()
        self.pending_predictions = self.pairs = 0
        self.stored = self.stored_predictions = self.stored_labels = 0
        self.unlisted.clear()
        self.tombstones_stored = False
        for name in ("_prediction_due", "_label_due", "_tombstone_due"):
            due = getattr(self, name)
            setattr(self, name, Buckets(due.bucket_s, due.kind))
        if self.store is not None:
            self.store.close()
            self.store = None
        return counts

    def _entomb(self, deadline: float, request_ids: list[PKey], watermark: float, on_disk: bool) -> None:
        """Tombstones of resolved ids, until ``deadline`` (listed on disk when their bucket was);
        removed at once when the watermark is past it already (as this sweep would remove them: at
        the end of input, every bucket)."""
        if self._tombstone_due.is_due(deadline, watermark):
            self._bury(request_ids)
        else:
            self._tombstone_due.add_many(deadline, request_ids, self.store if on_disk else None)

    def _bury(self, request_ids: list[PKey]) -> None:
        """Remove the tombstones among ``request_ids``."""
        ids, others = self.ids, self.others
        for request_id in request_ids:
            if type(ids.get(request_id)) is int:
                del ids[request_id]
                if others and type(request_id) is tuple:
                    models = others.get(request_id[0])
                    if models is not None and request_id[1] in models:
                        models.remove(request_id[1])
                        if not models:
                            del others[request_id[0]]
