"""The join agent's table: its keys, and how its values are stored.

Each join partition writes what its engine took in as *batches* (``batch/<partition>/<id>``,
``batch_key``): the raw JSON of its predictions and labels, one table write per save; its input partitions' event
times (``\\x00watermark/<input>/<partition>``); and, before batches are pruned, its rolling
windows' pairs (``\\x00rolling/<partition>``). Batches and rolling pairs are stored compressed.

>>> value = batch_value([b'{"request_id":"r1"}'], [])
>>> value[:4] == ZSTD_MAGIC, batch_json(value)
(True, b'{"p":[{"request_id":"r1"}],"l":[]}')
"""

from __future__ import annotations

import math
import sys
import zlib
from collections.abc import Iterator
from typing import NamedTuple

import cramjam
import msgspec
import numpy as np

from stream.core.errors import InvalidRecord
from stream.core.records import Label, Prediction
from stream.core.wire import label_from_json, prediction_from_json, timestamp_from_json

__all__ = ["BATCH_KEY", "BATCH_ZSTD_LEVEL", "ROLLING_KEY", "WATERMARK_KEY", "ZSTD_MAGIC", "BatchKey", "batch_json",
           "batch_key", "batch_value", "compressed", "read_batch_key", "stored_in_order"]

WATERMARK_KEY = "\x00watermark/"  # + input/partition: how far it was read
BATCH_KEY = "batch/"  # + partition/id: a batch of records
ROLLING_KEY = "\x00rolling/"  # + partition: its rolling windows' pairs, stored before batches are pruned
# Compressed with zstd at level 1 (cramjam, the codec library aiokafka uses): 5.6 times smaller
# than the records' JSON at about 650 MB/s, against writing every input byte again to the
# changelog, the broker and rocksdb's blob files. Values stored before are zlib (level 1), or
# plain JSON: both still read (``batch_json``).
BATCH_ZSTD_LEVEL = 1
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"  # a zstd frame's first four bytes (RFC 8878)


class BatchKey(NamedTuple):
    partition: int
    number: int  # a batch's place among its partition's: later batches have larger numbers (0: not known)
    writer: str  # who wrote it: a join agent between two rebuilds (8 hex digits; "": not known)
    latest_ts: float | None  # its latest record's timestamp (None: not in the key)


def batch_key(partition: int, number: int, writer: str, latest_ts: float) -> str:
    """A batch's key: its partition, its number (16 hex digits), its writer's id (8 more) and its
    latest timestamp, so a restart learns which batches a saved engine took in, and when each may be
    pruned, from the keys alone (``kafka.checkpoints``).

    >>> key = batch_key(3, 1_700_000_000_000_000_000, "0a0b0c0d", 1.7e9)
    >>> key
    'batch/3/17979cfe362a0000.0a0b0c0d:1700000000.0'
    >>> read_batch_key(key)
    BatchKey(partition=3, number=1700000000000000000, writer='0a0b0c0d', latest_ts=1700000000.0)
    >>> read_batch_key("batch/3/" + "ab" * 16)  # an id of a version that wrote none of these
    BatchKey(partition=3, number=0, writer='', latest_ts=None)
    """
    return f"{BATCH_KEY}{partition}/{number:016x}.{writer}:{latest_ts!r}"


def read_batch_key(key: str) -> BatchKey:
    """What ``batch_key`` wrote in ``key`` (a key that starts with ``BATCH_KEY``)."""
    partition, _, name = key[len(BATCH_KEY):].partition("/")
    number, colon, latest = name.partition(":")
    if not colon:
        return BatchKey(int(partition), 0, "", None)
    number, _, writer = number.partition(".")
    return BatchKey(int(partition), int(number, 16), writer, float(latest))


def compressed(value: bytes) -> bytes:
    """A table value as stored: a zstd frame (see ``BATCH_ZSTD_LEVEL``)."""
    return bytes(cramjam.zstd.compress(value, BATCH_ZSTD_LEVEL))


def batch_value(predictions: list[bytes], labels: list[bytes]) -> bytes:
    """A batch as stored: records' raw JSON, as consumed."""
    return compressed(b'{"p":[' + b",".join(predictions) + b'],"l":[' + b",".join(labels) + b"]}")


def batch_json(value: bytes) -> bytes:
    """A stored value's JSON: zstd, or as stored before, zlib or plain JSON."""
    if value[:4] == ZSTD_MAGIC:
        return bytes(cramjam.zstd.decompress(value))
    return value if value[:1] in (b"{", b"[") else zlib.decompress(value)


class _Stored(msgspec.Struct):
    predictions: list[msgspec.Raw] = msgspec.field(name="p")  # the records' JSON as stored, not decoded yet
    labels: list[msgspec.Raw] = msgspec.field(name="l")


_STORED = msgspec.json.Decoder(_Stored)
_DECODERS = (prediction_from_json, label_from_json)
_ANY_SIZE = sys.maxsize  # stored records were taken in: a smaller max_record_bytes since refuses none


def stored_in_order(values: list[bytes], chunk: int) -> tuple[list[float], Iterator[list[Prediction | Label]]]:
    """The records of stored batches in (timestamp, kind) order, stored order among equals (as the
    engine took them in), ``chunk`` at a time; and each batch's latest timestamp (-inf if empty).

    Only the timestamps are decoded at first; a record is decoded when its chunk comes, and the
    JSON of each batch is let go once all its records are. So a rebuild holds one chunk of record
    objects at a time: objects that come and go in a long rebuild, between the pending entries
    that stay, left holes that kept 250-270 bytes of RSS per pending prediction instead of about 200.
    """
    raws: list[msgspec.Raw | None] = []
    kinds: list[int] = []
    stamps: list[float] = []
    latest: list[float] = []
    for value in values:
        batch = _STORED.decode(batch_json(value))
        last = -math.inf
        for kind, part in ((0, batch.predictions), (1, batch.labels)):
            for raw in part:
                ts = _stamp(raw, kind)
                raws.append(raw)
                kinds.append(kind)
                stamps.append(ts)
                last = max(last, ts)
        latest.append(last)
    order = np.lexsort((np.array(kinds, dtype=np.int8), np.array(stamps, dtype=np.float64))).tolist()  # stable

    def chunks() -> Iterator[list[Prediction | Label]]:
        for start in range(0, len(order), chunk):
            records: list[Prediction | Label] = []
            for i in order[start:start + chunk]:
                records.append(_DECODERS[kinds[i]](bytes(raws[i]), _ANY_SIZE))
                raws[i] = None
            yield records

    return latest, chunks()


def _stamp(raw: msgspec.Raw, kind: int) -> float:
    """A stored record's timestamp, as decoding it whole gives it."""
    try:
        return timestamp_from_json(raw)
    except InvalidRecord:  # a form only the whole decode takes (the dict path's)
        return _DECODERS[kind](bytes(raw), _ANY_SIZE).timestamp
