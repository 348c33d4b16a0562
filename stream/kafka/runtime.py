"""The worker's runtime: what faust calls, as methods on the state they share.

faust calls in four places: its fetch loop hands each input partition's fetched records to
:meth:`Runtime.join_inputs` (a direct handler, see ``patches.deliver_without_tasks``), the merge
agent hands each partial to :meth:`Runtime.merge_one`, a timer calls :meth:`Runtime.flush`, and
rebalance signals call :meth:`Runtime.on_rebalance`. Everything else here is mlmon's: the join
and merge state (:mod:`join_agent`, :mod:`merge_agent`) and the offset protocol
(:mod:`offsets`). Given a stand-in for the app and dict-like tables, it runs without a broker.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from faust.types import TP

from stream.config import Config
from stream.kafka.join_agent import SAVE_BYTES, Join, Output
from stream.kafka.memory import resident_bytes, return_free_memory
from stream.kafka.merge_agent import Merge
from stream.kafka.offsets import Handled, Sequencer, rewinds
from stream.kafka.patches import SendRecords, committed_offset, in_partition, table_writable

__all__ = ["DEAD_LETTERS_AT_ONCE", "Runtime", "Send", "consumer_lag"]

log = logging.getLogger("mlmon.worker")
MEMORY_LOG_EVERY_S = 60.0  # how often the log says how many requests are pending, and the memory they hold
DEAD_LETTERS_AT_ONCE = 1000  # a partition's dead letters held at most until the next flush
SETTLE_EVERY = 1024  # queued records a partition's engine takes at once (or fewer, at a fetched list's end)
RUN_MESSAGES = 256  # admitted messages handled at once (``Join.handle_many``)
Send = Callable[[str, bytes | None, bytes, int | None], Awaitable[Any]]  # topic, key, value, partition


class Runtime:
    def __init__(self, config: Config, app: Any, batches: Any, windows: Any, send: Send, join: Join,
                 merge: Merge, handled: Handled, send_records: SendRecords,
                 flush_sent: Callable[[], Awaitable[Any]] | None = None) -> None:
        self.config = config
        self.app = app  # reads .rebalancing and .consumer
        self.batches = batches  # the join's table (see join_agent)
        self.windows = windows  # the merge's table (see merge_agent)
        self.send = send
        self.send_records = send_records  # many records to chosen partitions (the repartition topic's)
        self.flush_sent = flush_sent  # waits until everything sent so far reached Kafka (None: sends are at once)
        self.confirming: asyncio.Future[None] | None = None  # saved engines waiting for the producer's flush
        self.join = join
        self.merge = merge
        self.handled = handled
        self.sequencer = Sequencer(handled, committed_offset)
        # One sender at a time, in the order outputs were drained: a heartbeat (a partition's
        # watermark) must reach the merger after every partial of the records below that
        # watermark, or it could close a window before the window's last pairs arrive.
        self.sending = asyncio.Lock()
        self.health_due = 0.0  # health records once a second, whatever the flush interval
        self.memory_log_due = 0.0  # with the first health record, then every MEMORY_LOG_EVERY_S
        self.forward_beat = b""  # the last heartbeat sent on the repartition topic: again when it changes,
        self.forward_beat_due = 0.0  # or after a second
        self.committed_topics = {config.predictions_topic, config.labels_topic, config.partials_topic,
                                 config.repartition_topic}
        self.inputs = (config.predictions_topic, config.labels_topic)

    async def publish(self, items: list[Output]) -> None:
        """Send outputs: dead letters in batches (they can come by the thousand), the rest one by one."""
        dead_letters_topic = self.config.dead_letters_topic
        dead = [(0, key, value) for topic, key, value in items if topic == dead_letters_topic]
        if dead:
            await self.send_records(dead_letters_topic, dead)
        for topic, key, value in items:
            if topic != dead_letters_topic:
                await self.send(topic, key, value, None)

    def mark_handled(self, partition: int, saved: list[list[Any]]) -> None:
        for topic, first, last in saved:
            self.handled.add(TP(topic, partition), first, last)

    async def forward(self) -> None:
        """Hand the records bound for other partitions to the producer (see :mod:`routing`)."""
        async with self.sending:
            await self._forward()

    async def _forward(self) -> None:
        """(With ``sending`` held.) The forwards are taken before the first await, so a heartbeat
        read just before follows every record it covers. Then the messages of inputs whose
        records all go elsewhere, and their dead letters sent, count as handled: a commit flushes
        the producer first."""
        join = self.join
        forwards, join.forwards = join.forwards, []
        passed, join.passed = join.passed, {}
        if forwards:
            await self.send_records(self.config.repartition_topic, forwards)
        if passed:
            await self.publish(join.intake_outputs())  # the dead letters among them
        for (topic, partition), (first, last) in passed.items():
            self.handled.add(TP(topic, partition), first, last)

    # ------------------------------------------------------------------ join

    async def join_inputs(self, tp: TP, messages: list[Any]) -> None:
        """A partition's input messages, in offset order: those admitted (see ``Sequencer``) are
        handled ``RUN_MESSAGES`` at a time (``Join.handle_many``), with no wait between their
        admission and their handling, then fed to the partition's engine and saved with its batch."""
        join, sequencer = self.join, self.sequencer
        run: list[Any] = []  # admitted, not handled yet
        for n, message in enumerate(messages, 1):
            offset = message.offset
            if self.app.rebalancing:
                sequencer.skipped(tp, offset)
                continue
            admitted = sequencer.admit(self.app.consumer, tp, offset)
            if admitted is None:
                await self._take_run(tp, run, False)  # before waiting: a rebalance may come meanwhile
                admitted = await self.in_sequence(tp, offset)
            if not admitted:
                continue
            if join.stale:  # (only after a wait, with nothing admitted before it waiting)
                join.rebuild(self.batches)
            run.append(message)
            if len(run) == RUN_MESSAGES:
                await self._take_run(tp, run, n == len(messages))
        await self._take_run(tp, run, True)
        if tp.partition in join.queued:  # the last messages were skipped (a rebalance came)
            join.settle(tp.partition)
        if join.forwards or join.passed:
            await self.forward()

    async def _take_run(self, tp: TP, run: list[Any], last: bool) -> None:
        """Handle admitted messages (then empties ``run``); save the partition's batch when it is
        large enough, else have its engine take the queued records every ``SETTLE_EVERY`` and at
        the ``last`` of a fetched list; publish what is due."""
        if not run:
            return
        join, config, partition = self.join, self.config, tp.partition
        join.handle_many(tp.topic, partition, run[0].offset, [message.value for message in run])
        run.clear()
        if not join.takes_in(tp.topic):
            if join.forwards or len(join.intake.dead_letters) >= DEAD_LETTERS_AT_ONCE:  # all go elsewhere
                await self.forward()
            return
        saved = []
        if join.unsaved_bytes(partition) >= SAVE_BYTES and table_writable(self.batches, config.repartition_topic):
            with in_partition(config.repartition_topic, partition):
                saved = join.save(self.batches, partition)  # (its queued records first: ``settle``)
        elif last or join.queued_records(partition) >= SETTLE_EVERY:
            join.settle(partition)  # the engine takes its records a batch at a time
        if join.forwards:
            await self.forward()  # before the saved messages count: some were forwarded
        await self.publish_due(join.engines[partition], saved)
        self.mark_handled(partition, saved)
        await asyncio.sleep(0)  # let timers run within a long fetched list

    async def publish_due(self, engine: Any, saved: list[list[Any]]) -> None:
        """Closed windows' partials go out at once (alert latency); dead letters wait for the flush
        timer, a batch at a time, unless many are waiting or their offsets are about to count."""
        dead = len(engine.dead_letters)
        if engine.metric_records or dead >= DEAD_LETTERS_AT_ONCE or (dead and saved):
            async with self.sending:
                await self.publish(self.join.outputs())

    # ----------------------------------------------------------------- merge

    async def merge_one(self, message: Any, value: bytes | None) -> None:
        """One partial or heartbeat, in offset order; marked handled once processed and sent."""
        if not await self.in_sequence(message.tp, message.offset):
            return
        if not await self.writable(self.windows):
            return  # a rebalance came meanwhile: read again after it
        if self.merge.stale:
            self.merge.rebuild(self.windows)
        items = self.merge.handle(self.windows, message.partition, message.offset, value)
        directed = self.merge.registry.take_directed()  # asks and answers between merger partitions
        if items or directed:
            async with self.sending:
                await self.publish(items)
                for partition, body in directed:
                    await self.send(self.config.partials_topic, None, body, partition)
        self.handled.add(message.tp, message.offset)

    async def writable(self, table: Any) -> bool:
        """Wait until faust can route ``table``'s writes (it learns its changelog's partitions some
        time after the assignment; a write before fails): False if a rebalance came first."""
        config = self.config
        waited = 0
        while not table_writable(table, config.partials_topic):
            if self.app.rebalancing:
                return False
            waited += 1
            if waited == 300:
                log.warning("table %s cannot be written after 30 s: does %s have %d partitions?",
                            table.name, config.partials_topic, config.partitions)
            await asyncio.sleep(0.1)
        return True

    async def in_sequence(self, tp: TP, offset: int) -> bool:
        """Whether an agent handles this message: none during a rebalance, then each partition's
        in offset order (see Sequencer)."""
        while not self.app.rebalancing:
            verdict = self.sequencer.admit(self.app.consumer, tp, offset)
            if verdict is not None:
                return verdict
            await self.learn_where_logs_begin()  # no committed offset: counting starts at the log's start
            if tp not in self.handled.earliest:
                await asyncio.sleep(0.5)  # the broker did not answer: ask again
        self.sequencer.skipped(tp, offset)
        return False

    # ----------------------------------------------------------------- timer

    async def flush(self) -> None:
        """Save each partition's batch, publish partials and a heartbeat, then, once a second, a
        health record, and read again the partitions that stopped moving."""
        join, config, app = self.join, self.config, self.app
        if join.stale:
            if app.rebalancing:  # tables may still be recovering
                return
            join.rebuild(self.batches)  # even with no input flowing: watermarks, partials and health go out
            return_free_memory()
        if not table_writable(self.batches, config.repartition_topic):
            return  # just after an assignment: saved at a later flush
        assignment = app.consumer.assignment()
        partitions = sorted(tp.partition for tp in assignment if tp.topic == config.repartition_topic)
        inputs = sorted((tp.topic, tp.partition) for tp in assignment if tp.topic in self.inputs)
        now = time.monotonic()
        join.advance(inputs, partitions, now)
        async with self.sending:
            saved = {}
            for partition in sorted(set(join.engines) | set(join.unsaved)):  # write each batch, forget the final
                with in_partition(config.repartition_topic, partition):
                    saved[partition] = join.save(self.batches, partition)
                    if join.prune_due and min(join.prune_due) < join.watermark(partition) // 60:
                        join.prune(self.batches, partition)
            for engine in join.engines.values():
                engine.flush()
            items = join.outputs()  # drained with no await before the watermarks are read
            join.checkpoint(now)  # an engine saved now has taken in its stored batches, its outputs drained
            beat = join.heartbeat(partitions)
            forward_beat = join.forward_heartbeat(inputs) if inputs else None
            await self._forward()  # every record read before forward_beat was made, then forward_beat
            if forward_beat is not None and (forward_beat != self.forward_beat or now >= self.forward_beat_due):
                self.forward_beat, self.forward_beat_due = forward_beat, now + 1.0
                await self.send_records(config.repartition_topic,
                                        [(p, None, forward_beat) for p in range(config.partitions)])
            await self.publish(items)
            if beat is not None:
                for partition in range(config.partitions):  # every merger partition hears every watermark
                    await self.send(config.partials_topic, None, beat, partition)
        for partition, offsets in saved.items():
            self.mark_handled(partition, offsets)
        if join.checkpoints.unconfirmed and (self.confirming is None or self.confirming.done()):
            self.confirming = asyncio.ensure_future(self.confirm_checkpoints())  # flushes are not held meanwhile
        if time.monotonic() >= self.health_due:
            self.health_due = time.monotonic() + 1.0
            await self.learn_where_logs_begin()
            stalled = [] if app.rebalancing else self.sequencer.stalled(app.consumer)
            health = {**join.health(), "rereads": self.sequencer.rereads,  # seeks back to messages faust skipped
                      "stalled_partitions": stalled, "late_partials": self.merge.late_partials,
                      "refused_partials": self.merge.refused_partials}
            await self.send(config.health_topic, config.app_id.encode(), orjson.dumps(health), None)
            if time.monotonic() >= self.memory_log_due:
                self.memory_log_due = time.monotonic() + MEMORY_LOG_EVERY_S
                log.info("pending: %d predictions (%d on disk), %d labels (%d on disk); %.0f MiB resident, "
                         "%.0f MiB in the join's store on disk", health["pending_predictions"],
                         health["pending_on_disk_predictions"], health["pending_labels"],
                         health["pending_on_disk_labels"], resident_bytes() / (1 << 20),
                         health["join_store_bytes"] / (1 << 20))
            join.lag = consumer_lag(app.consumer, join.offsets)
            return_free_memory()

    async def confirm_checkpoints(self) -> None:
        """A saved engine counts once every output drained before it reached Kafka (see
        :mod:`checkpoints`): the producer is flushed first. A failed flush drops the saves."""
        checkpoints = self.join.checkpoints
        taken = list(checkpoints.unconfirmed)
        try:
            if self.flush_sent is not None:
                await self.flush_sent()
        except Exception as exc:
            log.warning("saved engines dropped: the producer's flush failed: %s", exc)
            checkpoints.discard(taken)
            return
        checkpoints.confirm(taken)

    async def learn_where_logs_begin(self) -> None:
        """The start offset of each assigned input without a committed offset (see Handled)."""
        consumer = self.app.consumer
        unknown = [tp for tp in consumer.assignment() if tp.topic in self.committed_topics
                   and committed_offset(consumer, tp) is None and tp not in self.handled.earliest]
        if unknown:
            try:
                self.handled.earliest.update(await consumer.earliest_offsets(*unknown))
            except Exception as exc:  # a rebalance or a broker outage: asked again next second
                log.info("start offsets not known yet: %s", exc)

    # ------------------------------------------------------------- rebalance

    def on_rebalance(self, sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        self.join.stale = self.merge.stale = True  # partitions moved: rebuild from the tables first
        self.sequencer.reset()
        rewinds(self.app.consumer).clear()  # partitions are sought to their committed offsets anyway


def consumer_lag(consumer: Any, offsets: dict[tuple[str, int], int]) -> dict[tuple[str, int], int]:
    """Records between the last one handled and the high-water mark, per input topic-partition."""
    lag = {}
    for (topic, partition), offset in list(offsets.items()):
        try:
            highwater = consumer.highwater(TP(topic, partition))
        except Exception:  # not assigned here any more, or not fetched yet
            continue
        if highwater is not None:
            lag[(topic, partition)] = max(0, highwater - offset - 1)
    return lag
