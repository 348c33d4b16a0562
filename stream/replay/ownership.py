"""A row's share of a replay in shares (``shards``): by a hash of its request id, whatever its format.

The hash is CRC-32 of the id's JSON text: a JSON line's ``request_id`` read as it is (``msgspec.Raw``,
decoded only when it holds an escape), a CSV or Parquet row's id as the same text would be, so that
a request's rows meet in one share. A row without an id to read goes to the share its number picks
(and is refused there).
"""

from __future__ import annotations

import zlib
from typing import Any

import msgspec

__all__ = ["owner", "owners"]


class _Id(msgspec.Struct, gc=False):
    request_id: msgspec.Raw  # its JSON text: hashed as it is when it holds no escape


_IDS = msgspec.json.Decoder(_Id)
_QUOTE = zlib.crc32(b'"')  # the CRC-32 of a JSON string's opening quote, to go on from


def owner(raw: Any, sequence: int, shares: int, max_bytes: int) -> int:
    """The share of a row (a JSONL line, or a CSV or Parquet row): by a hash of its request id's
    JSON text (CRC-32; a string's is its UTF-8 between quotes, whatever the format and the process:
    decoded first if it holds an escape), or by ``sequence`` when it has none to read."""
    if type(raw) is bytes:
        if len(raw) <= max_bytes:
            try:
                return _share(_IDS.decode(raw).request_id, sequence, shares)
            except (msgspec.DecodeError, msgspec.ValidationError):
                pass
    elif type(raw) is dict:
        request_id = raw.get("request_id")
        if type(request_id) is str:
            return _quoted_crc(request_id) % shares
    return sequence % shares


def owners(raws: list[Any], sequences: list[int], shares: int, max_bytes: int) -> list[int]:
    """``owner`` of each row. JSON lines have their request ids read all at once when every one
    of them decodes (as nearly always), and hashed as they are when none holds an escape."""
    if raws and set(map(type, raws)) == {bytes} and max(map(len, raws)) <= max_bytes:
        try:
            texts = [one.request_id for one in map(_IDS.decode, raws)]
        except (msgspec.DecodeError, msgspec.ValidationError):
            pass
        else:
            if b"\\" in b"".join(texts):
                return [_share(text, s, shares) for text, s in zip(texts, sequences, strict=True)]
            crc = zlib.crc32
            return [crc(text) % shares for text in texts]
    return [owner(raw, sequence, shares, max_bytes) for raw, sequence in zip(raws, sequences, strict=True)]


def _share(text: msgspec.Raw, sequence: int, shares: int) -> int:
    """The share of a row whose request id has the JSON text ``text`` (see ``owner``)."""
    if b"\\" not in bytes(text):
        return zlib.crc32(text) % shares
    try:
        return _quoted_crc(msgspec.json.decode(text, type=str)) % shares
    except (msgspec.DecodeError, msgspec.ValidationError):  # not a string: no request id to read
        return sequence % shares


def _quoted_crc(request_id: str) -> int:
    """CRC-32 of a request id's UTF-8 between quotes (its JSON text when it needs no escape)."""
    return zlib.crc32(b'"', zlib.crc32(request_id.encode("utf-8", "surrogatepass"), _QUOTE))
