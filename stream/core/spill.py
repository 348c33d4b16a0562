"""The join's pending state beyond its memory budget: an embedded RocksDB store on local disk.

``JoinBuffer`` keeps a request's whole state (its models' slots, a waiting label, the models it
has) in memory or here, never split. What it moves here is the state due soonest: whole time
buckets of deadlines, the oldest first, each bucket's list of ids as one value. A batch's
requests come back with one batched read (``take``, RocksDB's multi-get, whose bloom filters
answer the requests never seen in a few microseconds), and a due bucket comes back whole when the
watermark passes it, never by a scan of everything stored.

The store is a cache of what the join's inputs rebuild, not a record of them: it has no write-ahead
log, lives in a fresh temporary directory, and is deleted when the join is (or the process ends).
RocksDB (through rocksdict, which the Kafka worker's faust tables use already) rather than
SQLite or LMDB: batched point reads with bloom filters, writes that never rewrite in place, and a
memory use set by a few options whatever the size on disk.

>>> store = SpillStore()
>>> store.put_states([(key_bytes("r1"), b"state")])
>>> store.take_states([key_bytes("r1"), key_bytes(7)]), store.take_states([key_bytes("r1")])
([b'state', None], [None])
>>> store.put_chunk(0, -5, 0, b"ids"); store.take_chunks(0, -5, 1)
[b'ids']
>>> store.close()
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from typing import Any, cast

from stream.core.ids import Key

__all__ = ["BLOCK_CACHE_BYTES", "WRITE_BUFFER_BYTES", "SpillStore", "key_bytes"]

WRITE_BUFFER_BYTES = 16 << 20  # a memtable; RocksDB keeps at most two
BLOCK_CACHE_BYTES = 16 << 20  # data, index and filter blocks read back (filters stay within it)
_BUCKET = 1 << 63  # a bucket number (signed) as an unsigned big-endian key part: they sort in order


def key_bytes(key: Key) -> bytes:
    """A request's key as the store's: a UUID's 128-bit number in 16 bytes, else the id's UTF-8
    (lone surrogates kept), told apart by a first byte; state keys start below 0x02, chunks at b'b'."""
    if type(key) is int:
        return b"\x00" + key.to_bytes(16, "big")
    return b"\x01" + key.encode("utf-8", "surrogatepass")  # type: ignore[union-attr]


class SpillStore:
    """States by request key, and chunks of bucket lists by (list, bucket, number); every value is
    bytes that the join encodes. ``path``: a directory to hold the store's own temporary
    directory (default: the system's)."""

    def __init__(self, path: str | None = None) -> None:
        from rocksdict import BlockBasedOptions, Cache, Options, Rdict, WriteOptions

        if path:
            os.makedirs(path, exist_ok=True)
        self.path = tempfile.mkdtemp(prefix="mlmon-join-", dir=path or None)
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        options.set_write_buffer_size(WRITE_BUFFER_BYTES)
        options.set_max_write_buffer_number(2)
        options.set_max_background_jobs(1)
        table = BlockBasedOptions()
        table.set_bloom_filter(10, False)
        table.set_block_cache(Cache(BLOCK_CACHE_BYTES))
        table.set_cache_index_and_filter_blocks(True)
        table.set_pin_l0_filter_and_index_blocks_in_cache(True)
        options.set_block_based_table_factory(table)
        self._db = Rdict(self.path, options)
        writes = WriteOptions()
        writes.disable_wal = True  # type: ignore[method-assign,assignment]  # a cache: rebuilt, never recovered
        self._db.set_write_options(writes)
        self._finalizer = weakref.finalize(self, _remove, self._db, self.path)

    def put_states(self, items: list[tuple[bytes, bytes]]) -> None:
        from rocksdict import WriteBatch

        batch = WriteBatch(raw_mode=True)
        for key, value in items:
            batch.put(key, value)
        self._db.write(batch)

    def take_states(self, keys: list[bytes]) -> list[bytes | None]:
        """The states stored under ``keys`` (None where there is none), removed from the store."""
        from rocksdict import WriteBatch

        found: list[bytes | None] = self._db.get(cast(list[Any], keys))  # type: ignore[assignment]
        batch = WriteBatch(raw_mode=True)
        for key, value in zip(keys, found, strict=True):
            if value is not None:
                batch.delete(key)
        if len(batch):
            self._db.write(batch)
        return found

    def put_chunk(self, kind: int, bucket: int, number: int, value: bytes) -> None:
        self._db[_chunk_key(kind, bucket, number)] = value

    def take_chunks(self, kind: int, bucket: int, count: int) -> list[bytes]:
        """Chunks 0 to ``count`` - 1 of a bucket's list, removed from the store."""
        from rocksdict import WriteBatch

        keys = [_chunk_key(kind, bucket, number) for number in range(count)]
        found: list[bytes] = self._db.get(cast(list[Any], keys))  # type: ignore[assignment]
        batch = WriteBatch(raw_mode=True)
        for key in keys:
            batch.delete(key)
        self._db.write(batch)
        return found

    def disk_bytes(self) -> int:
        """The store's files' size: its tables (and its memtables, not yet written)."""
        tables = self._db.property_int_value("rocksdb.total-sst-files-size") or 0
        return int(tables) + int(self._db.property_int_value("rocksdb.cur-size-all-mem-tables") or 0)

    def close(self) -> None:
        self._finalizer()


def _chunk_key(kind: int, bucket: int, number: int) -> bytes:
    return b"b" + bytes((kind,)) + (bucket + _BUCKET).to_bytes(8, "big") + number.to_bytes(4, "big")


def _remove(db: Any, path: str) -> None:
    db.close()
    shutil.rmtree(path, ignore_errors=True)
