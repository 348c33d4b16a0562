"""The join's time buckets: ids listed by the bucket of their deadline, swept a bucket at a time
once the watermark passes it; a bucket's list may be partly on disk (``core.spill``).

>>> buckets = Buckets(60.0, 0)
>>> buckets.add(61.0, "r1"); buckets.add(200.0, "r2")
>>> [(end, ids) for end, ids, _ in buckets.due(130.0, None)]
[(120.0, ['r1'])]
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Iterator

from stream.core.ids import Key
from stream.core.slots import PKey
from stream.core.spill import SpillStore, key_bytes, request_key

__all__ = ["Buckets", "pkey_bytes", "pkey_from", "request_keys"]


class Buckets:
    """Ids grouped by the time bucket of their deadline; a min-heap of bucket numbers. A bucket's
    list may be partly on disk (``spill``; there, a set: an id listed twice in a bucket is
    swept the same way once)."""

    __slots__ = ("bucket_s", "by_bucket", "count", "heap", "kind", "last_bucket", "last_ids", "on_disk")

    def __init__(self, bucket_s: float, kind: int) -> None:
        self.bucket_s = bucket_s
        self.kind = kind  # which of the join's lists: its number in the store
        self.by_bucket: dict[int, list[PKey]] = {}
        self.heap: list[int] = []  # every bucket with ids, in memory or on disk
        self.last_bucket = -1
        self.last_ids: list[PKey] = []
        self.on_disk: set[int] = set()  # buckets with ids in the store
        self.count = 0  # ids in the lists in memory

    def add(self, deadline: float, request_id: PKey) -> None:
        self.count += 1
        bucket = int(deadline // self.bucket_s)
        if bucket == self.last_bucket:  # in-order input lands in the same bucket again and again
            self.last_ids.append(request_id)
            return
        ids = self.by_bucket.get(bucket)
        if ids is None:
            ids = self.by_bucket[bucket] = []
            if bucket not in self.on_disk:
                heapq.heappush(self.heap, bucket)
        ids.append(request_id)
        self.last_bucket, self.last_ids = bucket, ids

    def add_many(self, deadline: float, request_ids: list[PKey], store: SpillStore | None = None) -> None:
        """``add`` of each; with ``store``, straight to the bucket's list there."""
        bucket = int(deadline // self.bucket_s)
        if bucket not in self.on_disk and bucket not in self.by_bucket:
            heapq.heappush(self.heap, bucket)
        if store is not None:
            store.put_index(self.kind, bucket, [pkey_bytes(pkey) for pkey in request_ids])
            self.on_disk.add(bucket)
            return
        self.count += len(request_ids)
        ids = self.by_bucket.get(bucket)
        if ids is None:
            self.by_bucket[bucket] = request_ids
        else:
            ids.extend(request_ids)

    def is_due(self, deadline: float, watermark: float) -> bool:
        """Whether ``due(watermark)`` would yield the bucket of ``deadline``."""
        return math.isinf(watermark) or (int(deadline // self.bucket_s) + 1) * self.bucket_s <= watermark

    def due(self, watermark: float, store: SpillStore | None) -> Iterator[tuple[float, list[PKey], bool]]:
        """(bucket end, ids, whether some were on disk) of each bucket that ended at or before the
        watermark, in order, as it is taken off."""
        heap = self.heap
        while heap and (math.isinf(watermark) or (heap[0] + 1) * self.bucket_s <= watermark):
            bucket = heapq.heappop(heap)
            ids = self.by_bucket.pop(bucket, None) or []
            self.count -= len(ids)
            if bucket == self.last_bucket:
                self.last_bucket = -1
            if bucket in self.on_disk and store is not None:
                self.on_disk.discard(bucket)
                stored = [pkey_from(data) for data in store.take_index(self.kind, bucket)]
                yield (bucket + 1) * self.bucket_s, stored + ids, True
            else:
                yield (bucket + 1) * self.bucket_s, ids, False

    def spill(self, bucket: int, store: SpillStore) -> list[PKey]:
        """Move the bucket's list in memory to the store; returns it."""
        ids = self.by_bucket.pop(bucket)
        self.count -= len(ids)
        store.put_index(self.kind, bucket, [pkey_bytes(pkey) for pkey in ids])
        self.on_disk.add(bucket)
        if bucket == self.last_bucket:
            self.last_bucket = -1
        return ids


def pkey_bytes(pkey: PKey) -> bytes:
    """A slot's key in a list on disk: its model (4 bytes), then its request's key."""
    if type(pkey) is tuple:
        return pkey[1].to_bytes(4, "big") + key_bytes(pkey[0])
    return b"\x00\x00\x00\x00" + key_bytes(pkey)  # type: ignore[arg-type]


def pkey_from(data: bytes) -> PKey:
    model = int.from_bytes(data[:4], "big")
    key = request_key(data[4:])
    return (key, model) if model else key


def request_keys(request_ids: Iterable[PKey]) -> Iterator[Key]:
    return (pkey[0] if type(pkey) is tuple else pkey for pkey in request_ids)  # type: ignore[misc]
