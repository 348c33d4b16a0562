"""Broken producer clocks: records stamped too far in the future are refused, not counted.

One record stamped days ahead would move its partition's event time there: every open window
would close early and every real record after it would count as late. So a record more than
``max_future_s`` ahead of a reference time is refused with the reason (a dead letter) and moves
no watermark. The Kafka worker's reference is its wall clock; a backtest of the past has none,
so replay and the Python API judge each file in timestamp order with :func:`judge_in_time_order`.

>>> future_reason(7200.0, reference=0.0, max_future_s=3600, of="the worker's clock")
"'timestamp' is 2.0 h ahead of the worker's clock (1970-01-01T00:00:00Z); max_future_s is 3600"
>>> future_reason(600.0, reference=0.0, max_future_s=3600, of="the worker's clock") is None
True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import TypeVar

__all__ = ["future_reason", "judge_in_time_order"]

T = TypeVar("T")


def future_reason(ts: float, reference: float, max_future_s: float, of: str) -> str | None:
    """Why ``ts`` is refused (more than ``max_future_s`` past ``reference``), or None. A
    ``max_future_s`` of 0 turns the check off."""
    if max_future_s <= 0 or ts <= reference + max_future_s:
        return None
    when = datetime.fromtimestamp(reference, UTC).isoformat().replace("+00:00", "Z")
    return f"'timestamp' is {(ts - reference) / 3600:.1f} h ahead of {of} ({when}); max_future_s is {max_future_s:g}"


def judge_in_time_order(items: Iterable[T], ts_of: Callable[[T], float], max_future_s: float) -> Iterator[
        tuple[T, str | None]]:
    """Each item of one file, in timestamp order, with the reason it is refused, or None.

    A broken clock's record sits alone in the future: more than ``max_future_s`` after the record
    before it and before the one after it (or last of all). Such a record is refused; a record
    close to the next one is not (the morning after a quiet night, a batch job's next run), nor
    are several records of the same broken clock together, which the worker, judging by its wall
    clock, would refuse. A history whose records are all further apart than ``max_future_s``
    needs a larger ``max_future_s`` (or 0, no limit) to be replayed whole.

    >>> [reason is None for _, reason in judge_in_time_order([0, 10, 20, 30, 99_999], float, 3600)]
    [True, True, True, True, False]
    >>> [reason is None for _, reason in judge_in_time_order([0, 10, 86_400, 86_410], float, 3600)]
    [True, True, True, True]
    """
    previous = -math.inf
    held: tuple[T, float, float] | None = None
    for item in items:
        ts = ts_of(item)
        if held is not None:
            yield held[0], future_reason(held[1], held[2], max_future_s, "the record before it") if (
                ts - held[1] > max_future_s) else None
            held = None
        if max_future_s > 0 and ts - previous > max_future_s and math.isfinite(previous):
            held = (item, ts, previous)
        else:
            yield item, None
        previous = ts
    if held is not None:
        yield held[0], future_reason(held[1], held[2], max_future_s, "the record before it")
