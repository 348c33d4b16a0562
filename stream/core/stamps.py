"""RFC 3339 timestamps as epoch seconds, a column at a time.

``core.records.parse_timestamp`` reads one string with a regular expression and
``datetime.fromisoformat``, about 3 µs a string. Here the common forms, ``YYYY-MM-DDTHH:MM:SS``
with up to six fractional digits and ``Z`` or a ``±HH:MM`` offset, are read for a whole column
with numpy from the strings' code points; the value is the one ``parse_timestamp`` gives, bit for
bit: whole microseconds since the epoch (below 2**53, so exact as a float) divided by a million,
as ``datetime.timestamp`` divides them (the range of 2000 to 9999 is the caller's to check). A
string of another form, or with a field out of its range (month 13, second 60, February 30, an
offset of 24 hours), is left to ``parse_timestamp`` (``handled`` says which), so the errors and
their reasons stay its own (``tests/unit/core/test_stamps.py`` holds the two equal).

>>> seconds, handled = epoch_seconds(["2026-01-01T00:00:00Z", "2026-01-01T01:00:00.5+01:00", "noon"])
>>> seconds[:2].tolist(), handled.tolist()
([1767225600.0, 1767225600.5], [True, True, False])
"""

from __future__ import annotations

import itertools

import numpy as np
import numpy.typing as npt

__all__ = ["epoch_seconds"]

_SHORTEST, _LONGEST = 20, 32  # "2026-01-01T00:00:00Z" to "2026-01-01T00:00:00.000000+00:00"
_DIGITS = (0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18)
_MAX_MICROS = 2**53  # whole microseconds a float holds exactly
_DAYS_IN_MONTH = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], dtype=np.int64)
_ZERO = ord("0")


def epoch_seconds(texts: list[str]) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    """Epoch seconds of each string of the common forms (see the module), and which strings those
    are (for the others the value is NaN)."""
    out = np.full(len(texts), np.nan)
    handled = np.zeros(len(texts), dtype=bool)
    lengths = np.fromiter(map(len, texts), np.int64, len(texts))
    rows = np.flatnonzero((lengths >= _SHORTEST) & (lengths <= _LONGEST))
    chosen = [texts[i] for i in rows.tolist()]
    try:  # one byte a character: the common forms are ASCII
        held = np.array(chosen, dtype=f"S{_LONGEST}")
    except UnicodeEncodeError:
        ascii_only = np.fromiter(map(str.isascii, chosen), bool, len(chosen))
        rows = rows[ascii_only]
        held = np.array(list(itertools.compress(chosen, ascii_only.tolist())), dtype=f"S{_LONGEST}")
    if not len(rows):
        return out, handled
    points = held.view(np.uint8).reshape(len(rows), _LONGEST)
    size = lengths[rows]
    is_digit = (points >= _ZERO) & (points <= _ZERO + 9)
    ok = is_digit[:, _DIGITS].all(axis=1)
    ok &= (points[:, 4] == ord("-")) & (points[:, 7] == ord("-")) & (points[:, 13] == ord(":"))
    ok &= (points[:, 16] == ord(":")) & ((points[:, 10] == ord("T")) | (points[:, 10] == ord("t")))

    def at(offset: int) -> npt.NDArray[np.int64]:  # each row's character ``offset`` from its end
        return np.take_along_axis(points, (size - offset)[:, None], axis=1)[:, 0].astype(np.int64)

    def digit(k: int) -> npt.NDArray[np.int64]:  # each row's character ``k`` as a digit (if it is one)
        return points[:, k].astype(np.int64) - _ZERO

    last = at(1)
    zulu = (last == ord("Z")) | (last == ord("z"))
    sign = at(6)
    ok &= zulu | (((sign == ord("+")) | (sign == ord("-"))) & (at(3) == ord(":")))
    zone = np.where(zulu, 1, 6)
    offset_digits = [at(k) - _ZERO for k in (5, 4, 2, 1)]
    for value in offset_digits:
        ok &= zulu | ((value >= 0) & (value <= 9))
    offset_h = offset_digits[0] * 10 + offset_digits[1]
    offset_m = offset_digits[2] * 10 + offset_digits[3]
    fraction = size - zone - 20  # digits after the point (-1: no point)
    ok &= (fraction == -1) | ((fraction >= 1) & (fraction <= 6) & (points[:, 19] == ord(".")))
    micros = np.zeros(len(rows), dtype=np.int64)
    for k in range(6):  # the fraction's digits, padded with zeros to six
        present = k < fraction
        ok &= ~present | is_digit[:, 20 + k]
        micros = micros * 10 + np.where(present, digit(20 + k), 0)

    def number(first: int, width: int) -> npt.NDArray[np.int64]:
        value = np.zeros(len(rows), dtype=np.int64)
        for k in range(first, first + width):
            value = value * 10 + digit(k)
        return value

    year, month, day = number(0, 4), number(5, 2), number(8, 2)
    hour, minute, second = number(11, 2), number(14, 2), number(17, 2)
    leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
    ok &= (year >= 1) & (month >= 1) & (month <= 12) & (day >= 1)
    ok &= day <= _DAYS_IN_MONTH[np.clip(month, 0, 12)] + ((month == 2) & leap)
    ok &= (hour <= 23) & (minute <= 59) & (second <= 59)
    ok &= zulu | ((offset_h <= 23) & (offset_m <= 59))
    offset_s = np.where(zulu, 0, np.where(sign == ord("-"), -1, 1) * (offset_h * 3600 + offset_m * 60))
    seconds = _days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second - offset_s
    micros += seconds * 1_000_000
    ok &= np.abs(micros) < _MAX_MICROS
    out[rows[ok]] = micros[ok].astype(np.float64) / 1e6
    handled[rows[ok]] = True
    return out, handled


def _days_from_civil(year: npt.NDArray[np.int64], month: npt.NDArray[np.int64], day: npt.NDArray[np.int64]
                     ) -> npt.NDArray[np.int64]:
    """Days from 1970-01-01 to each date of the proleptic Gregorian calendar (years from 1)."""
    y = year - (month <= 2)
    era = y // 400
    of_era = y - era * 400
    of_year = (153 * ((month + 9) % 12) + 2) // 5 + day - 1
    return era * 146097 + of_era * 365 + of_era // 4 - of_era // 100 + of_year - 719468  # type: ignore[no-any-return]
