"""Every format the worker writes to Kafka, in one place: the messages of the partials topic, and
the values of its two tables (each changelogged, so a restart reads what an earlier version
wrote).

**The partials topic's messages** are typed records with a format version: what the join agents
and the registry send there, and what the merge agent reads (``decode``). Six kinds: a window's
``Partial`` from one input partition; a model's detector ``Pairs``; a partition's ``Heartbeat``
(its watermarks and idle partitions); and the registry's ``Ask``, ``Decided`` and ``Forget`` (see
:mod:`stream.kafka.registry`). Each is one JSON object naming its ``kind`` and format version
``v``. Their other fields keep the names the messages had before they named a kind, so a worker
of an earlier version reads them as it read those (by their keys, which ``decode`` still does for
a message without ``kind``), and a rolling upgrade loses nothing. A message of a later format
version, or of no known kind, raises ``MessageError``: the merge agent dead-letters it with that
reason.

>>> encode(Decided(decided="fraud", admitted=True))
b'{"kind":"decided","decided":"fraud","admitted":true,"v":1}'
>>> decode(b'{"decided":"fraud","admitted":false}')  # as an earlier version wrote it
Decided(decided='fraud', admitted=False, v=1)
>>> decode(b'{"kind":"decided","v":2,"decided":"fraud","admitted":true}')
Traceback (most recent call last):
...
stream.kafka.formats.MessageError: a 'decided' message of format 2, from a later mlmon (this one reads up to 1)

**The merge table** (the merge agent's, per merger partition; faust encodes its values as JSON):

- a window's entry, under its record key (``core.merge.record_key``): while it is open, the
  latest partial from each input partition, under ``partial_slot`` (the partition's number, and
  what a partial folded into ``__other__`` stands for), and its merger partition under ``"_mp"``;
  once final, ``{"_final": true, "_mp": ...}`` (``open_entry``, ``final_entry``);
- ``CUMULATIVE_KEY`` + a cumulative window's key: ``CumulativeBase``, the base windows folded in;
- ``RULES_KEY`` + model: its alert rules' states, a list of ``RuleEntry``;
- ``DETECTORS_KEY`` + model: ``DetectorsEntry``; + model, NUL, offset: ``PairsEntry``;
- ``REGISTRY_KEY``: at the registry, each model's last sighting and home (``registry_value``);
  ``DECISION_KEY`` + model: at its home, whether it is admitted (a bool); ``ADMITTED_KEY`` + model:
  its admitted names (``core.admission.Admission.export``).

Values with fields are structs with a format version ``v``, left out while it is 1 (so a value an
earlier version stored reads as version 1, and one stored now reads there as before); a reader
refuses a later one (``TableError``). A value with no room for a version (a bool, the registry's
map, a window's entry) changes form only under a new key, the old one still read.

**The join agent's table** (its keys and stored forms: ``batch_key``, ``batch_value``, ``batch_json``;
reading batches back in order: :mod:`stream.kafka.batches`): each join partition writes what its
engine took in as *batches* (``batch/<partition>/<id>``): the raw JSON of its predictions and
labels, one table write per save; its input partitions' event times (``\\x00watermark/<input>/<partition>``);
and, before batches are pruned, its rolling windows' pairs (``\\x00rolling/<partition>``). Batches
and rolling pairs are stored compressed.

>>> value = batch_value([b'{"request_id":"r1"}'], [])
>>> value[:4] == ZSTD_MAGIC, batch_json(value)
(True, b'{"p":[{"request_id":"r1"}],"l":[]}')
"""

from __future__ import annotations

import zlib
from typing import Any, NamedTuple

import cramjam
import msgspec

__all__ = ["ADMITTED_KEY", "BATCH_KEY", "BATCH_ZSTD_LEVEL", "CUMULATIVE_KEY", "DECISION_KEY", "DETECTORS_KEY",
           "REGISTRY_KEY", "ROLLING_KEY", "RULES_KEY", "VERSION", "WATERMARK_KEY", "ZSTD_MAGIC", "Ask", "BatchKey",
           "CumulativeBase", "Decided", "DetectorsEntry", "Forget", "Heartbeat", "Message", "MessageError", "Pairs",
           "PairsEntry", "Partial", "RuleEntry", "StoredBatch", "TableError", "batch_json", "batch_key",
           "batch_value", "compressed", "decode", "encode", "entry_home", "entry_partials", "final_entry",
           "is_final", "open_entry", "pairs_key", "partial_slot", "read_batch", "read_batch_key", "read_registry",
           "read_value", "registry_value", "stored"]

VERSION = 1  # of every kind's format: increased when a kind changes in a way an earlier reader cannot read


class MessageError(ValueError):
    """A message that is not one this version of mlmon reads."""


class _Message(msgspec.Struct, tag_field="kind", kw_only=True):
    v: int = VERSION


class Partial(_Message, tag="partial"):
    """The additive state of one window from one input partition (``core.series.Window.partial``)."""

    partition: int
    partial: dict[str, Any]


class Pairs(_Message, tag="pairs"):
    """The pairs (and retractions) of a model's detector rules from one input partition."""

    partition: int
    model: str
    pairs: dict[str, Any]


class Heartbeat(_Message, tag="heartbeat"):
    """Each input partition's watermark (None: not known yet) that a join agent owns, and those idle."""

    watermarks: dict[str, float | None]
    idle: list[int] = []


class Ask(_Message, tag="ask"):
    """To the registry: may the model ``ask`` publish (its home partition, the event time)?"""

    ask: str
    home: int
    ts: float


class Decided(_Message, tag="decided"):
    """From the registry to a model's home: its decision on model ``decided``."""

    decided: str
    admitted: bool


class Forget(_Message, tag="forget"):
    """From the registry to a model's home: model ``forget`` gave its slot up."""

    forget: str


Message = Partial | Pairs | Heartbeat | Ask | Decided | Forget
_KINDS: dict[str, type[Any]] = {str(kind.__struct_config__.tag): kind
                                for kind in (Partial, Pairs, Heartbeat, Ask, Decided, Forget)}
_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(Message)


def encode(message: Message) -> bytes:
    return _ENCODER.encode(message)


def decode(value: bytes) -> Message:
    """A message as the partials topic carries it: of this version's format or an earlier one."""
    try:
        message: Message = _DECODER.decode(value)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return _decoded_otherwise(value)
    if message.v > VERSION:
        raise _later(message.v, type(message))
    return message


def _decoded_otherwise(value: bytes) -> Message:
    """``decode`` of a message without a kind (an earlier version's), or one that is not valid
    (then ``MessageError``, saying why)."""
    try:
        body = msgspec.json.decode(value)
    except msgspec.DecodeError as exc:
        raise MessageError(f"not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise MessageError(f"expected a JSON object, got {type(body).__name__}")
    kind = body.get("kind")
    if kind is None:  # written before messages named their kind: known by their keys
        kind = next((k for k in ("partial", "pairs", "ask", "decided", "forget") if k in body), "heartbeat")
        body = {**body, "kind": kind}
    elif kind not in _KINDS:
        raise MessageError(f"no message of kind {kind!r} is known to this mlmon")
    version = body.get("v", VERSION)
    if type(version) is int and version > VERSION:
        raise _later(version, _KINDS[kind])
    try:
        message: Message = msgspec.convert(body, _KINDS[kind])
    except msgspec.ValidationError as exc:
        raise MessageError(f"a {kind!r} message: {exc}") from None
    return message


def _later(version: int, kind: type[Any]) -> MessageError:
    name = kind.__struct_config__.tag
    return MessageError(f"a {name!r} message of format {version}, from a later mlmon (this one reads up to {VERSION})")


# ------------------------------------------------------------------ the merge table

CUMULATIVE_KEY = "\x00cumulative/"  # + a cumulative window's key: the base windows folded in so far
RULES_KEY = "\x00rules/"  # + model: its alert rules' states
DETECTORS_KEY = "\x00detectors/"  # + model: its detectors' states; + model, NUL, offset: pairs waiting
REGISTRY_KEY = "\x00registry"  # at the registry: model -> [last seen, home]
DECISION_KEY = "\x00decided/"  # + model, at its home: admitted or not
ADMITTED_KEY = "\x00admitted/"  # + model, at its home: its versions, segment keys and values
_FINAL, _HOME = "_final", "_mp"  # a window entry's bookkeeping (no partial's slot starts with "_")


class TableError(ValueError):
    """A table value this version of mlmon cannot read (a later format, or not the form its key holds)."""


class _Value(msgspec.Struct, kw_only=True, omit_defaults=True):
    v: int = VERSION  # left out while 1: values stored before versions read as version 1


class CumulativeBase(_Value):
    """A cumulative window's base windows folded in so far: through the one starting at
    ``through``, their merged state (``core.merge.WindowState.export``) under ``head``'s names."""

    through: float
    head: dict[str, Any]
    state: dict[str, Any]


class RuleEntry(_Value):
    """An alert rule's state (``core.rules.RuleState`` as a dict) for one series of a model."""

    rule: str
    series: list[Any]
    state: dict[str, Any]


class DetectorsEntry(_Value):
    """A model's detectors (``core.detector_book.DetectorBook.export``), kept at merger partition ``here``."""

    here: int
    judged_to: float | None
    detectors: list[Any]


class PairsEntry(_Value):
    """A ``Pairs`` message's pairs as they came to merger partition ``here``, until they are judged."""

    here: int
    pairs: dict[str, Any]


def stored(value: _Value) -> Any:
    """A struct as the table stores it (JSON types, ``v`` left out while it is 1)."""
    return msgspec.to_builtins(value)


def read_value(value: Any, kind: type[Any]) -> Any:
    """A stored value as ``kind`` (a struct above); ``TableError`` if it is not one, or of a later format.

    >>> read_value({"here": 2, "pairs": {}}, PairsEntry)
    PairsEntry(here=2, pairs={}, v=1)
    >>> read_value({"here": 2, "pairs": {}, "v": 2}, PairsEntry)
    Traceback (most recent call last):
    ...
    stream.kafka.formats.TableError: a PairsEntry of format 2, from a later mlmon (this one reads up to 1)
    """
    try:
        read = msgspec.convert(value, kind)
    except msgspec.ValidationError as exc:
        raise TableError(f"a stored {kind.__name__}: {exc}") from None
    if read.v > VERSION:
        raise TableError(f"a {kind.__name__} of format {read.v}, from a later mlmon (this one reads up to {VERSION})")
    return read


def pairs_key(model: str, offset: int) -> str:
    """Where a model's ``Pairs`` message at ``offset`` waits (offsets zero-padded: keys sort as they came)."""
    return f"{DETECTORS_KEY}{model}\x00{offset:020d}"


def partial_slot(partition: int, stands_for: str) -> str:
    """Where a window's entry keeps input ``partition``'s partial (one for each name folded into ``__other__``)."""
    return f"{partition}|{stands_for}" if stands_for else str(partition)


def open_entry(entry: dict[str, Any] | None, slot: str, partial: dict[str, Any], here: int) -> dict[str, Any]:
    """``entry`` (None: none yet) with ``partial`` in ``slot``: a new dict (the table may encode it later)."""
    entry = dict(entry or {})
    entry[slot] = partial
    entry[_HOME] = here
    return entry


def final_entry(here: int) -> dict[str, Any]:
    """A final window's entry: its partials let go, a replayed one is not merged again."""
    return {_FINAL: True, _HOME: here}


def is_final(entry: dict[str, Any]) -> bool:
    return bool(entry.get(_FINAL))


def entry_home(entry: dict[str, Any]) -> int:
    """The merger partition of a window's entry."""
    return int(entry[_HOME])


def entry_partials(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """An open window's partials, one for each input partition (and name folded into ``__other__``)."""
    return [v for k, v in entry.items() if not k.startswith("_")]


def registry_value(seen: dict[str, float], homes: dict[str, int], home: int) -> dict[str, list[Any]]:
    """The registry's map: each model's last sighting and home (``home`` where none is known)."""
    return {model: [ts, homes.get(model, home)] for model, ts in seen.items()}


def read_registry(value: dict[str, list[Any]]) -> dict[str, tuple[float, int]]:
    """``registry_value`` read back: model -> (last seen, home)."""
    return {model: (float(seen), int(home)) for model, (seen, home) in value.items()}


# ------------------------------------------------------------ the join agent's table

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


class StoredBatch(msgspec.Struct):
    """A stored batch's records, their JSON as stored (decoded only when needed)."""

    predictions: list[msgspec.Raw] = msgspec.field(name="p")
    labels: list[msgspec.Raw] = msgspec.field(name="l")


_BATCH = msgspec.json.Decoder(StoredBatch)


def read_batch(value: bytes) -> StoredBatch:
    """What ``batch_value`` stored (or an earlier version's zlib or plain JSON: ``batch_json``)."""
    return _BATCH.decode(batch_json(value))


def batch_json(value: bytes) -> bytes:
    """A stored value's JSON: zstd, or as stored before, zlib or plain JSON."""
    if value[:4] == ZSTD_MAGIC:
        return bytes(cramjam.zstd.decompress(value))
    return value if value[:1] in (b"{", b"[") else zlib.decompress(value)


