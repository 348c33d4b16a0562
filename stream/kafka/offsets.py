"""mlmon's offset protocol: which input messages count, in which order, and how far offsets may be
committed. It is not a patch to faust; the patches in ``stream/kafka/patches/`` call into it.

- :class:`Handled`: the offsets the agents handled (saved), per partition; commits go no further.
- :class:`Sequencer`: each partition's messages count in offset order, from the first one not
  handled; a gap has the fetch loop seek back, and a partition that stops moving is read again.
- :class:`Rewinds`: the seeks back, made by the fetch loop between two fetches.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable
from typing import cast

from faust.types import TP, ConsumerT

__all__ = ["REREAD_AFTER_S", "Handled", "Rewinds", "Sequencer", "rewinds"]

log = logging.getLogger("mlmon.worker")
REREAD_AFTER_S = 2.0  # a seek back asked again after this long, if the missing message still has not come


class Handled:
    """Offsets the agents handled in this process, per topic-partition, as closed ranges, and
    where each partition begins when the group has no committed offset for it yet."""

    def __init__(self) -> None:
        self.ranges: dict[TP, list[list[int]]] = defaultdict(list)
        self.earliest: dict[TP, int] = {}  # first offset in the log (set by the worker)

    def add(self, tp: TP, offset: int, last: int | None = None) -> None:
        """Offset ``offset`` (to ``last``, if given) handled."""
        last = offset if last is None else last
        ranges = self.ranges[tp]
        if ranges and ranges[-1][1] + 1 == offset:
            ranges[-1][1] = last
        else:
            ranges.append([offset, last])
            if len(ranges) > 64:  # only the latest matter: commits move forward
                del ranges[0]

    def reach(self, tp: TP, start: int) -> int:
        """The first offset at or after ``start`` not handled here."""
        reach = start
        for first, last in sorted(self.ranges.get(tp, ())):
            if first <= reach:
                reach = max(reach, last + 1)
        return reach

    def start(self, tp: TP, committed: int | None) -> int | None:
        """Where counting starts: the committed offset, else the start of the log if known."""
        return committed if committed is not None else self.earliest.get(tp)


class Sequencer:
    """Lets each input partition's messages through in offset order, from the first one not
    handled, and has the fetch loop seek back when one is missing.

    faust 0.15 resumes fetching before the seek that ends a rebalance: messages fetched then are
    skipped by their stream, and the rest of that fetch, delivered after the seek, moves the fetch
    loop's read offset past them, so their redelivery is dropped too: records lost around
    rebalances. Kafka delivers a message again only after a seek, which faust
    makes only at rebalances. So nothing is handled during a rebalance, and after it a message
    counts only if it is the next one of its partition: an earlier one is a duplicate (skipped),
    a later one means a gap (skipped, and the fetch loop seeks back to the missing offset), so
    event time never runs ahead of a missing record.

    A gap is noticed when a later message comes. When none comes (the messages skipped during a
    rebalance were the last ones in the log, so the fetcher has nothing more to bring), nothing
    would notice: :meth:`stalled` (called once a second) finds the partitions whose messages
    were delivered past the next offset to handle with no progress since, and reads them again.
    """

    def __init__(self, handled: Handled, committed: Callable[[ConsumerT, TP], int | None]) -> None:
        """``committed``: the consumer's committed offset of a partition, None if none yet
        (``patches.committed_offset``: faust keeps it privately)."""
        self.handled = handled
        self.committed = committed
        self.expected: dict[TP, int] = {}  # next offset to handle, per partition
        self.last_asked: dict[TP, tuple[int, float]] = {}  # (offset, when)
        self.delivered: dict[TP, int] = {}  # the latest offset delivered, handled or skipped
        self.waiting: dict[TP, tuple[int, float]] = {}  # (next offset, since when) behind what was delivered
        self.rereads = 0

    def reset(self) -> None:
        """A rebalance (the engines are rebuilt after it, unsaved records gone): offsets start again
        from what is saved."""
        self.expected.clear()
        self.last_asked.clear()
        self.delivered.clear()
        self.waiting.clear()

    def skipped(self, tp: TP, offset: int) -> None:
        """A message came while nothing may be handled (a rebalance): :meth:`stalled` will have it read
        again if nothing later does."""
        if offset > self.delivered.get(tp, -1):
            self.delivered[tp] = offset

    def admit(self, consumer: ConsumerT, tp: TP, offset: int) -> bool | None:
        """True: handle this message. False: skip it. None: where its partition starts is not
        known yet (no committed offset, and the log's start not learned)."""
        if offset > self.delivered.get(tp, -1):
            self.delivered[tp] = offset
        expected = self.expected.get(tp)
        if expected is None:
            expected = self._first(consumer, tp)
            if expected is None:
                return None
        if offset == expected:
            self.expected[tp] = offset + 1
            return True
        if offset > expected:
            absent = rewinds(consumer).found.pop(tp, None)
            if absent is not None and absent[0] == expected and absent[1] <= offset:
                log.log(logging.INFO if absent[1] - expected == 1 else logging.WARNING,  # 1: a marker
                        "offsets %d to %d of %s[%d] are not in the log (transaction markers, aborted "
                        "records or retention): counting goes on from %d", expected, absent[1] - 1,
                        tp.topic, tp.partition, absent[1])
                self.handled.add(tp, expected, absent[1] - 1)  # nothing there to wait for
                self.expected[tp] = absent[1]
                return self.admit(consumer, tp, offset)
            self._seek_back(consumer, tp, expected, offset)
        self.expected[tp] = expected
        return False

    def _first(self, consumer: ConsumerT, tp: TP) -> int | None:
        """The first offset of ``tp`` not handled yet; None while where it starts is not known."""
        start = self.handled.start(tp, self.committed(consumer, tp))
        return None if start is None else self.handled.reach(tp, start)

    def stalled(self, consumer: ConsumerT, now: float | None = None) -> list[str]:
        """Partitions (``topic[p]``) whose next offset to handle was delivered, or passed, at least
        ``REREAD_AFTER_S`` ago with nothing handled since: each is read again from that offset (a
        warning each time). Call it regularly; it returns those still waiting, for the health record."""
        now = time.monotonic() if now is None else now
        assigned = consumer.assignment()
        stuck = []
        for tp, delivered in list(self.delivered.items()):
            expected = self.expected.get(tp)
            if expected is None:
                expected = self._first(consumer, tp)
            if tp not in assigned or expected is None or delivered < expected:
                self.waiting.pop(tp, None)  # caught up, or nothing to go on yet
                continue
            since = self.waiting.get(tp)
            if since is None or since[0] != expected:
                self.waiting[tp] = (expected, now)
                continue
            if now - since[1] < REREAD_AFTER_S:
                continue
            stuck.append(f"{tp.topic}[{tp.partition}]")
            asked = self.last_asked.get(tp)
            if asked is None or asked[0] != expected or now - asked[1] >= REREAD_AFTER_S:
                log.warning("no progress on %s[%d] for %.0f s: offset %d is next, offset %d was delivered; "
                            "reading it again from %d", tp.topic, tp.partition, now - since[1], expected,
                            delivered, expected)
                self.last_asked[tp] = (expected, now)
                self.rereads += 1
                rewinds(consumer).asked[tp] = expected
        return stuck

    def _seek_back(self, consumer: ConsumerT, tp: TP, missing: int, offset: int) -> None:
        now = time.monotonic()
        asked = self.last_asked.get(tp)
        if asked is not None and asked[0] == missing and now - asked[1] < REREAD_AFTER_S:
            return  # the seek is on its way; later messages of the same fetch are skipped meanwhile
        self.last_asked[tp] = (missing, now)
        self.rereads += 1
        log.info("reading %s[%d] again from offset %d: faust skipped it (got offset %d)",
                 tp.topic, tp.partition, missing, offset)
        rewinds(consumer).asked[tp] = missing


class Rewinds:
    """Seeks back asked by the ``Sequencer``, made by the fetch loop between two fetches (a seek
    while a fetched batch is being delivered would be undone by the rest of that batch), and what
    each found: when the first message after a seek comes from further on, the offsets between
    are not in the log (deleted by retention, or transaction markers), and are not waited for."""

    def __init__(self) -> None:
        self.asked: dict[TP, int] = {}
        self.sought: dict[TP, int] = {}  # made, until the partition's next message is fetched
        self.found: dict[TP, tuple[int, int]] = {}  # (first, end) of offsets missing from the log

    def clear(self) -> None:
        """A rebalance: faust seeks every partition to its committed offset anyway."""
        self.asked.clear()
        self.sought.clear()
        self.found.clear()

    async def seek(self, consumer: ConsumerT) -> None:
        assigned = consumer.assignment()
        for tp, offset in list(self.asked.items()):
            del self.asked[tp]
            if tp in assigned:
                await consumer.seek(tp, offset)
                self.sought[tp] = offset

    def fetched(self, tp: TP, offset: int) -> None:
        """The fetch loop delivers ``offset``: the first message of ``tp`` since a seek?"""
        target = self.sought.pop(tp, None)
        if target is not None and offset > target:
            self.found[tp] = (target, offset)


def rewinds(consumer: ConsumerT) -> Rewinds:
    """The consumer's rewinds (one per consumer: the fetch loop and the agents share it)."""
    return cast(Rewinds, consumer.__dict__.setdefault("_mlmon_rewinds", Rewinds()))
