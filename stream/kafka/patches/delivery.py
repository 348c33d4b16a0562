"""The worker's own fetch loop: direct topics' records handed to their handler a fetched batch at
a time, other messages to faust's conductor without four tasks each (see ``UPSTREAM`` in
:mod:`stream.kafka.patches` for what each patch here relies on upstream)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, cast

from faust.transport.consumer import CONSUMER_FETCHING, Consumer
from faust.types import TP

from stream.kafka.offsets import rewinds

__all__ = [
    "RAW_TOPICS",
    "Handler",
    "deliver_without_tasks",
    "delivery_check",
    "direct_handlers",
    "raw_records_for_direct_topics",
]


Handler = Callable[[TP, list[Any]], Awaitable[None]]  # a partition's fetched records, in offset order


def direct_handlers(app: Any) -> dict[str, Handler]:
    """Topics whose messages the fetch loop hands straight to a handler (see
    ``deliver_without_tasks``), bypassing faust's conductor and streams."""
    return cast(dict[str, Handler], app.__dict__.setdefault("_mlmon_direct", {}))


def delivery_check(consumer: Consumer) -> Callable[[TP], bool]:
    """Whether faust's conductor would hand a partition's next message to its streams without
    waiting: flow running, no rebalance holding the callback map, room in the producer buffer and
    in every stream queue of the partition (faust's ``on_message`` awaits only those). The objects
    it reads are looked up once (faust's attribute lookups cost more than the checks)."""
    app: Any = consumer.app
    suspended = consumer.suspend_flow.is_set
    flow_active = app.flow_control.is_active
    conductor = app.topics
    callback_map_locked = conductor._tp_to_callback_lock.locked
    tp_index = conductor._tp_index
    buffer = app.producer.buffer

    def cannot_block(tp: TP) -> bool:
        if suspended() or not flow_active() or callback_map_locked() or buffer.size > buffer.max_messages:
            return False
        return not any(channel.queue.full() for channel in tp_index.get(tp, ()))

    return cannot_block


def deliver_without_tasks() -> None:
    """Hand consumed messages to the streams without four asyncio tasks each, and the messages of
    direct topics (``direct_handlers``) to their handler a fetched batch at a time.

    faust 0.15's fetch loop wraps every delivery in ``wait_first(callback(message),
    suspend_flow.wait())`` (a task each for the callback, the flow, and the service's stop and
    crash events), so that a delivery blocked on a full stream queue is abandoned when a
    rebalance suspends the flow: about a quarter of the worker's time (py-spy). When nothing
    can block the delivery (see ``delivery_check``), it is awaited directly: it completes
    before anything else runs, as the wrapped one would have. Otherwise faust's way is kept.

    A direct topic's records skip faust's message, conductor, stream and event objects (and
    their sensors and acks) altogether: each partition's fetched records go to the handler as
    one list, in offset order. What faust's ``getmany`` checks per message (flow running, same
    consumer generation, partition still active) is checked before each list; the handler
    itself must skip what comes during a rebalance (the worker's ``Sequencer`` does).

    This is faust's ``Consumer._drain_messages`` and ``getmany`` with those changes, and the
    seeks asked by the ``Sequencer`` made between two fetches (a seek while a fetched batch is
    being delivered would be undone by the rest of that batch).
    """
    if getattr(Consumer._drain_messages, "_mlmon", False):
        return

    async def drain_messages(self: Consumer, fetcher: Any) -> None:  # pragma: no cover - faust's loop
        consumer_should_stop = cast(Any, self)._stopped.is_set
        fetcher_should_stop = cast(Any, fetcher)._stopped.is_set
        set_flag = self.diag.set_flag
        unset_flag = self.diag.unset_flag
        rewound = rewinds(self)
        deliver = _Delivery(self)
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                if rewound.asked and not self.app.rebalancing:
                    await rewound.seek(self)
                set_flag(CONSUMER_FETCHING)
                records, active = await self._wait_next_records(1.0)
                await self.sleep(0)
                if records is not None and not self.should_stop:
                    if self.flow_active:
                        await deliver.batch(records, active)
                    else:  # as faust's getmany does
                        try:
                            await self.perform_seek()
                        except Exception as ex:
                            self.log.warning(f"exception performing seek when flow not active {ex}")
                unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(CONSUMER_FETCHING)

    drain_messages._mlmon = True  # type: ignore[attr-defined]
    Consumer._drain_messages = drain_messages  # type: ignore[method-assign]


RAW_TOPICS: set[str] = set()  # direct topics of this process's consumers (see ``_Delivery``)


def raw_records_for_direct_topics() -> None:
    """Give the direct topics' records to their handler as aiokafka's batch reader makes them.

    aiokafka wraps every fetched record in a ``ConsumerRecord``, a dataclass of eleven fields:
    0.4 µs and 90 bytes a record, in the consumer thread that shares the GIL with the handler.
    A direct topic's handler reads only ``offset`` and ``value``, which the reader's own record
    has already, so those records are passed on as they are; other topics keep faust's path.
    """
    from aiokafka.consumer.fetcher import PartitionRecords

    if getattr(PartitionRecords._consumer_record, "_mlmon", False):
        return
    wrap = PartitionRecords._consumer_record

    def consumer_record(self: PartitionRecords, tp: Any, record: Any) -> Any:
        return record if tp.topic in RAW_TOPICS else wrap(self, tp, record)

    consumer_record._mlmon = True  # type: ignore[attr-defined]
    PartitionRecords._consumer_record = consumer_record


class _Delivery:
    """One fetched batch, delivered: direct topics' records to their handler a partition at a
    time, the rest message by message to faust's conductor (see ``deliver_without_tasks``)."""

    def __init__(self, consumer: Consumer) -> None:
        self.consumer = consumer
        self.app: Any = consumer.app
        self.direct = direct_handlers(self.app)
        RAW_TOPICS.update(self.direct)
        self.rewound = rewinds(consumer)
        self.cannot_block = delivery_check(consumer)
        self.read_offsets: Any = consumer._read_offset
        self.since_yield = 0

    def _current(self, generation: int) -> bool:
        return self.consumer.flow_active and self.app.consumer_generation_id == generation

    async def batch(self, records: Any, active: set[TP] | None) -> None:
        consumer = self.consumer
        generation = self.app.consumer_generation_id
        buffered = consumer._buffered_partitions
        track = self.app.monitor.track_tp_end_offset
        others = {}
        for tp, batch in records.items():
            if active is not None and tp not in active and tp not in buffered:
                continue
            track(tp, consumer.highwater(tp))
            handler = self.direct.get(tp.topic)
            if handler is None:
                others[tp] = batch
                continue
            if not self._current(generation):
                return
            read = self.read_offsets.get(tp)
            if read is not None and batch[0].offset < read:
                batch = [record for record in batch if record.offset >= read]
                if not batch:
                    continue
            if self.rewound.sought:
                self.rewound.fetched(tp, batch[0].offset)
            await handler(tp, batch)
            self.read_offsets[tp] = batch[-1].offset
        if others:
            await self._one_by_one(others, generation)

    async def _one_by_one(self, records: Any, generation: int) -> None:
        """faust's way (round robin between topics), without its four tasks when nothing can block."""
        consumer = self.consumer
        callback = consumer.callback
        to_message = consumer._to_message
        read_offsets = self.read_offsets
        commit_every = consumer._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        for tp, record in consumer.scheduler.iterate(records):
            if not self._current(generation):
                return
            self.since_yield += 1
            if self.since_yield > 100:
                await asyncio.sleep(0)
                self.since_yield = 0
            offset = record.offset
            read = read_offsets.get(tp)
            if read is None or offset >= read:
                gap = offset - (read or 0)
                if gap > 1 and read and acks_enabled_for(tp.topic):
                    await consumer._add_gap(tp, read + 1, offset)
                if commit_every is not None and consumer._n_acked >= commit_every:
                    consumer._n_acked = 0
                    await consumer.commit()
                if self.rewound.sought:
                    self.rewound.fetched(tp, offset)
                message = to_message(tp, record)
                if self.cannot_block(tp):
                    await callback(message)
                else:
                    await consumer.wait_first(callback(message), consumer.suspend_flow.wait())
                read_offsets[tp] = offset
