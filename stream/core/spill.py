"""The join's pending state beyond its memory budget: an embedded RocksDB store on local disk.

``JoinBuffer`` keeps a request's whole state (its models' slots, a waiting label, the models it
has) in memory or here, never split. What it moves here is the state due soonest: whole time
buckets of deadlines, the oldest first, each id of a bucket's list as a key of its own under the
bucket's prefix. A batch's requests come back with one batched read (``take_states``, RocksDB's
multi-get, whose bloom filters answer for the requests never seen in under a microsecond), and a
due bucket's ids by reading its key range and removing what it read (``take_index``), never by a
scan of everything stored. Two writes need no read: a listing the join knows its sweep would pass
over is removed where it is (``unlist``), and a lone tombstone, kept under a key of its own
(``core.ondisk``), is removed when its bucket is due (``remove_states``).

The store is a cache of what the join's inputs rebuild, not a record of them: it has no write-ahead
log, lives in a fresh temporary directory named after its process, and is deleted when the join
is (or the process ends); the stores of processes killed meanwhile go when the next store in the
same directory is made, or a worker starts (``remove_orphans``). A checkpoint (``checkpoint``)
keeps a copy as it is at one moment, for an engine saved whole (``core.persist``); a store made
from it (``source``) starts where the saved engine's join was.
RocksDB (through rocksdict, which the Kafka worker's faust tables use already) rather than
SQLite or LMDB: batched point reads with bloom filters, writes that never rewrite in place, and a
memory use set by a few options whatever the size on disk.

>>> store = SpillStore()
>>> store.put_states([(key_bytes("r1"), b"state")])
>>> store.take_states([key_bytes("r1"), key_bytes(7)]), store.take_states([key_bytes("r1")])
([b'state', None], [None])
>>> store.put_index(0, -5, [b"b", b"a"]); store.take_index(0, -5), store.take_index(0, -5)
([b'a', b'b'], [])
>>> store.close()
"""

from __future__ import annotations

import bisect
import contextlib
import os
import shutil
import tempfile
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, cast

from stream.core.ids import Key

__all__ = ["BLOCK_CACHE_MB", "MIN_WRITE_BUFFER_BYTES", "READ_BUCKETS_S", "WRITE_BUFFER_BYTES", "Reads", "SpillStore",
           "StoreStatus", "key_bytes", "process_alive", "remove_orphans", "request_key"]

WRITE_BUFFER_BYTES = 8 << 20  # a memtable (a process's, shared out among its joins), at most two: smaller ones take
# writes faster (their skiplist stays in the CPU's caches), larger ones are flushed less often
MIN_WRITE_BUFFER_BYTES = 2 << 20  # a join's, however many share them: smaller ones leave many small files to read
BLOCK_CACHE_MB = 16  # blocks read back (RocksDB's tuning for point lookups: bloom filters, hashed blocks), alike
READ_BUCKETS_S = (0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, float("inf"))  # a batched read's
_PREFIX = "mlmon-join-"  # a store's directory: this, its process id, a dash, a unique part
_BUCKET = 1 << 63  # a bucket number (signed) as an unsigned big-endian key part: they sort in order


def key_bytes(key: Key) -> bytes:
    """A request's key as the store's: a UUID's 128-bit number in 16 bytes, else the id's UTF-8
    (lone surrogates kept), told apart by a first byte (below b'i', where the bucket lists start)."""
    if type(key) is int:
        return b"\x00" + key.to_bytes(16, "big")
    return b"\x01" + key.encode("utf-8", "surrogatepass")  # type: ignore[union-attr]


def request_key(data: bytes) -> Key:
    """The key ``key_bytes`` made ``data`` of.

    >>> [request_key(key_bytes(k)) for k in (2**100, "r1")]
    [1267650600228229401496703205376, 'r1']
    """
    if data[0] == 0:
        return int.from_bytes(data[1:], "big")
    return data[1:].decode("utf-8", "surrogatepass")


@dataclass
class Reads:
    """How long the store's batched reads took: a histogram (``READ_BUCKETS_S``, not cumulative)."""

    counts: list[int] = field(default_factory=lambda: [0] * len(READ_BUCKETS_S))
    sum_s: float = 0.0

    def observe(self, seconds: float) -> None:
        self.sum_s += seconds
        self.counts[bisect.bisect_left(READ_BUCKETS_S, seconds)] += 1

    def add(self, other: Reads) -> None:
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.sum_s += other.sum_s


@dataclass
class StoreStatus:
    """What a join holds on disk: pending (predictions, labels) there, the store's size, its reads."""

    pending: tuple[int, int] = (0, 0)
    disk_bytes: int = 0
    reads: Reads = field(default_factory=Reads)

    def add(self, other: StoreStatus) -> None:
        self.pending = (self.pending[0] + other.pending[0], self.pending[1] + other.pending[1])
        self.disk_bytes += other.disk_bytes
        self.reads.add(other.reads)


class SpillStore:
    """States by request key, and the ids of bucket lists by (list, bucket); states are bytes that
    the join encodes, ids bytes that it encodes too. ``path``: a directory to hold the store's own
    temporary directory (default: the system's); ``share``: the part of a process's joins this
    one is (a worker's partition), which its write buffers and cache get; ``source``: a
    checkpoint (``checkpoint``) whose content the store starts with."""

    def __init__(self, path: str | None = None, share: float = 1.0, source: str | None = None) -> None:
        from rocksdict import DBCompressionType, Options, Rdict, WriteOptions

        if path:
            os.makedirs(path, exist_ok=True)
        remove_orphans(path or tempfile.gettempdir())
        self.path = tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-", dir=path or None)
        self.share = share
        if source is not None:
            _copy_checkpoint(source, self.path)
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        options.optimize_for_point_lookup(max(1, round(BLOCK_CACHE_MB * share)))
        options.set_write_buffer_size(max(MIN_WRITE_BUFFER_BYTES, int(WRITE_BUFFER_BYTES * share)))
        options.set_max_write_buffer_number(2)
        options.set_max_background_jobs(1)
        options.set_compression_type(DBCompressionType.lz4())  # the fastest to read back of those that shrink it
        self._db = Rdict(self.path, options)
        writes = WriteOptions()
        writes.disable_wal = True  # type: ignore[method-assign,assignment]  # a cache: rebuilt, never recovered
        self._db.set_write_options(writes)
        self._finalizer = weakref.finalize(self, _remove, self._db, self.path)
        self.reads = Reads()

    def put_states(self, items: list[tuple[bytes, bytes]]) -> None:
        from rocksdict import WriteBatch

        batch = WriteBatch(raw_mode=True)
        for key, value in items:
            batch.put(key, value)
        self._db.write(batch)

    def take_states(self, keys: list[bytes], keep: bool = False) -> list[bytes | None]:
        """The states stored under ``keys`` (None where there is none), removed from the store
        unless ``keep`` (the caller overwrites or removes them soon)."""
        started = time.perf_counter()
        found: list[bytes | None] = self._db.get(cast(list[Any], keys))  # type: ignore[assignment]
        self.reads.observe(time.perf_counter() - started)
        if not keep:
            self.remove_states([key for key, value in zip(keys, found, strict=True) if value is not None])
        return found

    def remove_states(self, keys: list[bytes]) -> None:
        """Remove ``keys`` (states, or any key of the store), where they are: a write, no read."""
        from rocksdict import WriteBatch

        if keys:
            batch = WriteBatch(raw_mode=True)
            for key in keys:
                batch.delete(key)
            self._db.write(batch)

    def put_index(self, kind: int, bucket: int, ids: list[bytes]) -> None:
        """Add ``ids`` to the bucket's list ``kind`` (each id once: a list is a set here)."""
        from rocksdict import WriteBatch

        prefix = _prefix(kind, bucket)
        batch = WriteBatch(raw_mode=True)
        for data in ids:
            batch.put(prefix + data, b"")
        self._db.write(batch)

    def unlist(self, kind: int, listings: list[tuple[int, bytes]]) -> None:
        """Remove the ids from the lists ``kind`` of their buckets ((bucket, id) each), where
        they are (a write: nothing is read)."""
        self.remove_states([_prefix(kind, bucket) + data for bucket, data in listings])

    def take_index(self, kind: int, bucket: int) -> list[bytes]:
        """The ids of the bucket's list ``kind``, in byte order, removed from the store."""
        from rocksdict import WriteBatch

        prefix = _prefix(kind, bucket)
        end = _prefix(kind, bucket + 1)
        ids: list[bytes] = []
        batch = WriteBatch(raw_mode=True)
        for key in cast(Iterator[bytes], self._db.keys(from_key=prefix)):
            if key >= end:
                break
            ids.append(key[len(prefix):])
            batch.delete(key)  # not a range deletion: many of those make every point lookup slow
        if ids:
            self._db.write(batch)
        return ids

    def disk_bytes(self) -> int:
        """The store's files' size: its tables (and its memtables, not yet written)."""
        tables = self._db.property_int_value("rocksdb.total-sst-files-size") or 0
        return int(tables) + int(self._db.property_int_value("rocksdb.cur-size-all-mem-tables") or 0)

    def checkpoint(self, path: str) -> None:
        """Write the store as it is now to ``path`` (a new directory): RocksDB's checkpoint, its
        table files hard-linked where the file system allows (they are never changed), its
        memtables written first. A store made with ``source=path`` starts from it."""
        from rocksdict import Checkpoint

        Checkpoint(self._db).create_checkpoint(path)

    def close(self) -> None:
        self._finalizer()


def remove_orphans(folder: str, prefix: str = _PREFIX) -> list[str]:
    """Remove the stores in ``folder`` whose process is gone (killed before it could remove
    them); returns their paths. ``prefix``: of other directories named alike (a prefix, the
    process id, a dash, a unique part)."""
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            if not entry.name.startswith(prefix) or not entry.is_dir():
                continue
            pid = entry.name[len(prefix):].split("-", 1)[0]
            if pid.isdigit() and not process_alive(int(pid)):
                shutil.rmtree(entry.path, ignore_errors=True)
                removed.append(entry.path)
    return removed


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (another user's counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    return True


def _copy_checkpoint(source: str, path: str) -> None:
    """A checkpoint's files into a store's directory: table files (never changed) hard-linked,
    the others (RocksDB rewrites its manifest) copied, so the checkpoint stays as it was."""
    for name in os.listdir(source):
        origin, copy = os.path.join(source, name), os.path.join(path, name)
        if name.endswith((".sst", ".blob")):
            try:
                os.link(origin, copy)
                continue
            except OSError:  # another file system
                pass
        shutil.copyfile(origin, copy)


def _prefix(kind: int, bucket: int) -> bytes:
    return b"i" + bytes((kind,)) + (bucket + _BUCKET).to_bytes(8, "big")


def _remove(db: Any, path: str) -> None:
    with contextlib.suppress(Exception):  # its folder removed already (the process's temporary files)
        db.close()
    shutil.rmtree(path, ignore_errors=True)
