"""The messages of the partials topic, as typed records with a format version: what the join
agents and the registry send there, and what the merge agent reads (``decode``).

Six kinds: a window's ``Partial`` from one input partition; a model's detector ``Pairs``; a
partition's ``Heartbeat`` (its watermarks and idle partitions); and the registry's ``Ask``,
``Decided`` and ``Forget`` (see :mod:`stream.kafka.registry`). Each is one JSON object naming its
``kind`` and format version ``v``. Their other fields keep the names the messages had before they
named a kind, so a worker of an earlier version reads them as it read those (by their keys, which
``decode`` still does for a message without ``kind``), and a rolling upgrade loses nothing. A
message of a later format version, or of no known kind, raises ``MessageError``: the merge agent
dead-letters it with that reason.

>>> encode(Decided(decided="fraud", admitted=True))
b'{"kind":"decided","decided":"fraud","admitted":true,"v":1}'
>>> decode(b'{"decided":"fraud","admitted":false}')  # as an earlier version wrote it
Decided(decided='fraud', admitted=False, v=1)
>>> decode(b'{"kind":"decided","v":2,"decided":"fraud","admitted":true}')
Traceback (most recent call last):
...
stream.kafka.messages.MessageError: a 'decided' message of format 2, from a later mlmon (this one reads up to 1)
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = ["VERSION", "Ask", "Decided", "Forget", "Heartbeat", "Message", "MessageError", "Pairs", "Partial", "decode",
           "encode"]

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
