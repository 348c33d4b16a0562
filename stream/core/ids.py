"""Request ids as the join keeps them: a canonical UUID as its 128-bit number (half the memory of
its string for every pending request), any other id as it is.
"""

from __future__ import annotations

import numpy as np

__all__ = ["Key", "compact_id", "compact_ids"]

Key = str | int  # a request id, compacted (see compact_id)


def compact_id(request_id: str) -> Key:
    """A canonical UUID (lowercase, 8-4-4-4-12) as its 128-bit number, any other id as it is: half
    the memory per pending id (48 bytes, not 96), and one-to-one (an int never equals a
    str).

    >>> compact_id("6fa03847-181e-4a78-8a0f-3ba8dc11b05d")
    148376216477092837008177150713331298397
    >>> compact_id("6FA03847-181E-4A78-8A0F-3BA8DC11B05D"), compact_id("req-1")
    ('6FA03847-181E-4A78-8A0F-3BA8DC11B05D', 'req-1')
    """
    if len(request_id) == 36 and request_id[8] == request_id[13] == request_id[18] == request_id[23] == "-":
        digits = request_id.replace("-", "")
        if len(digits) == 32:
            try:
                number = int(digits, 16)
            except ValueError:
                return request_id
            if f"{number:032x}" == digits:  # lowercase hex digits only: one string per number
                return number
    return request_id


_HEX = np.full(256, 255, dtype=np.uint8)  # a byte's hex digit (lowercase only), else 255
_HEX[48:58] = np.arange(10)
_HEX[97:103] = np.arange(10, 16)
_DASHES = [8, 13, 18, 23]
_DIGITS = [i for i in range(36) if i not in _DASHES]


def compact_ids(request_ids: list[str]) -> list[Key]:
    """``compact_id`` of each, canonical UUIDs recognised and converted as arrays (about half the
    cost of one call each).

    >>> compact_ids(["6fa03847-181e-4a78-8a0f-3ba8dc11b05d", "6FA03847-181E-4A78-8A0F-3BA8DC11B05D"] * 8)[:2]
    [148376216477092837008177150713331298397, '6FA03847-181E-4A78-8A0F-3BA8DC11B05D']
    >>> compact_ids(["req-1", "req-2"])
    ['req-1', 'req-2']
    """
    n = len(request_ids)
    lengths = set(map(len, request_ids))
    if 36 not in lengths:  # no UUID among them: each as it is
        return list(request_ids)
    if n < 16 or lengths != {36}:
        return [compact_id(r) for r in request_ids]
    text = "".join(request_ids).encode()
    if len(text) != 36 * n:  # not ASCII
        return [compact_id(r) for r in request_ids]
    chars = np.frombuffer(text, dtype=np.uint8).reshape(n, 36)
    digits = _HEX[chars[:, _DIGITS]]
    canonical = ((chars[:, _DASHES] == 45).all(axis=1) & (digits != 255).all(axis=1)).tolist()
    octets = np.ascontiguousarray((digits[:, 0::2] << 4) | digits[:, 1::2])
    halves = octets.view(">u8").tolist()  # each id's two big-endian 64-bit halves
    return [(h << 64) | lo if ok else compact_id(r)
            for (h, lo), ok, r in zip(halves, canonical, request_ids, strict=True)]
