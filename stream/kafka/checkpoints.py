"""A worker's partition engines saved to local disk now and then, so that a restart (or a
rebalance that gives a partition back) feeds each engine only the batches stored after its save,
rather than every stored record: with months of pending predictions, those are months of input.

A save is a snapshot of one engine (``core.persist``: the engine pickled, its join's store as a
RocksDB checkpoint) made right after the flush wrote its partition's batch and drained every
output. It says which batches the engine had taken in (``Reflects``): every batch numbered up to
``floor`` (the table's batches when the engine was last rebuilt) and its writer's own, up to
``upto``. It counts only once everything drained before it has reached Kafka: the runtime flushes
the producer, then ``confirm`` renames it into place (``<root>/<partition>/<upto, 16 hex>``), and
the older saves of the partition go. A restart loads the latest confirmed save and feeds the
batches it does not reflect. Why that is exact:

- every batch it reflects had reached the table's changelog when it was confirmed (the producer's
  flush sends the changelog's records too; a save must never hold records the table lacks, or a
  rebuild without it, on another machine, would miss them), so one the table no longer has was
  pruned: its windows are final;
- a batch it does not reflect is fed (or, lost, delivered again): among them those that another
  worker wrote while it held the partition, whatever their numbers (clocks differ);
- a batch numbered up to ``floor`` that reaches the table after that rebuild was written by a
  worker that had lost the partition: it could not commit its messages, so this one read them too.

A save is local: a partition that moves to another worker is rebuilt there from its batches.
Saves from other code or settings are ignored (``core.persist.Mismatch``), and so is any save that
fails to load: the engine is then fed every stored record, as without saves.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass

from stream.core.engine import Engine
from stream.core.persist import Mismatch, load_engine, save_engine
from stream.core.settings import Settings
from stream.core.spill import process_alive
from stream.kafka.formats import BatchKey

__all__ = ["FOLDER", "Checkpoints", "Reflects"]

log = logging.getLogger("mlmon.worker")
FOLDER = "mlmon-checkpoints"  # under the join's store folder (``join_store_dir``, else ``data_dir``), per app id
_WRITING = ".writing-"  # a save not confirmed yet: <partition>/.writing-<number>-<pid>-<unique>
_REFLECTS = "reflects.json"


@dataclass(frozen=True)
class Reflects:
    """The batches a saved engine took in: every one numbered up to ``floor``, and ``writer``'s up to ``upto``."""

    floor: int
    writer: str
    upto: int

    def covers(self, key: BatchKey) -> bool:
        return key.number <= self.floor or (key.writer == self.writer and key.number <= self.upto)


class Checkpoints:
    """The saves of one worker's partition engines, under ``root``; one partition's each
    ``interval_s`` at most, one partition per ``take`` (a save pauses the worker for the
    pickling of that engine's memory)."""

    def __init__(self, root: str, interval_s: float) -> None:
        self.root = root
        self.interval_s = interval_s
        self.next_due: dict[int, float] = {}  # partition -> monotonic time of its next save
        self.saved: dict[int, int] = {}  # partition -> the batch number of its last save
        self.unconfirmed: list[tuple[int, int, str]] = []  # (partition, number, folder) awaiting ``confirm``

    def due(self, numbers: dict[int, int], now: float) -> int | None:
        """The partition to save now, if any: the most overdue of those whose batches moved on
        (``numbers``: each partition's latest batch number) since their last save."""
        if self.interval_s <= 0:
            return None
        best = None
        for partition, number in numbers.items():
            if number <= self.saved.get(partition, 0):
                continue
            due_at = self.next_due.setdefault(partition, now)  # first seen: saved at once
            if due_at <= now and (best is None or due_at < self.next_due[best]):
                best = partition
        return best

    def take(self, partition: int, reflects: Reflects, engine: Engine, now: float) -> None:
        """Save ``engine`` (which has taken in exactly the batches ``reflects`` says, its outputs
        drained); it counts once ``confirm`` is called. A failure is logged: the partition is then
        rebuilt from its batches, as without saves."""
        number = reflects.upto
        self.next_due[partition] = now + self.interval_s
        self.saved[partition] = number
        folder = os.path.join(self.root, str(partition), f"{_WRITING}{number:016x}-{os.getpid()}-{uuid.uuid4().hex}")
        started = time.perf_counter()
        try:
            save_engine(engine, folder)
            with open(os.path.join(folder, _REFLECTS), "w") as file:
                json.dump(asdict(reflects), file)
        except Exception as exc:  # a full disk, an engine that cannot be pickled: saves are an optimisation
            log.warning("could not save partition %d's engine: %s", partition, exc)
            shutil.rmtree(folder, ignore_errors=True)
            return
        log.info("saved partition %d's engine in %.2f s", partition, time.perf_counter() - started)
        self.unconfirmed.append((partition, number, folder))

    def confirm(self, taken: list[tuple[int, int, str]]) -> None:
        """Everything drained before the saves ``taken`` (of ``unconfirmed``) reached Kafka: they count now."""
        for save in taken:
            self.unconfirmed.remove(save)
        for partition, number, folder in taken:
            final = os.path.join(self.root, str(partition), f"{number:016x}")
            try:
                os.rename(folder, final)
            except OSError as exc:
                log.warning("could not keep partition %d's saved engine: %s", partition, exc)
                shutil.rmtree(folder, ignore_errors=True)
                continue
            self._remove_older(partition, number)

    def discard(self, taken: list[tuple[int, int, str]]) -> None:
        """The saves ``taken`` (of ``unconfirmed``) are dropped: the producer's flush failed."""
        for save in taken:
            self.unconfirmed.remove(save)
            shutil.rmtree(save[2], ignore_errors=True)
            self.saved.pop(save[0], None)  # saved again when next due

    def load(self, partition: int, settings: Settings) -> tuple[Engine, Reflects] | None:
        """The latest confirmed save of ``partition``, loaded, and what it reflects; None if there
        is none that loads (another code's, other settings', or damaged: logged), or saves are off."""
        if self.interval_s <= 0:
            return None
        folder = os.path.join(self.root, str(partition))
        for name in sorted(filter(_confirmed, _listdir(folder)), reverse=True)[:1]:
            try:
                engine = load_engine(os.path.join(folder, name), settings)
                with open(os.path.join(folder, name, _REFLECTS)) as file:
                    reflects = Reflects(**json.load(file))
            except Mismatch as exc:
                log.info("partition %d's saved engine is not used: %s", partition, exc)
                return None
            except Exception as exc:
                log.warning("partition %d's saved engine could not be loaded: %s", partition, exc)
                return None
            self.saved[partition] = reflects.upto
            return engine, reflects
        return None

    def _remove_older(self, partition: int, number: int) -> None:
        """Saves of ``partition`` older than ``number``, and unconfirmed ones that no process is writing."""
        folder = os.path.join(self.root, str(partition))
        for name in _listdir(folder):
            path = os.path.join(folder, name)
            if name.startswith(_WRITING):
                pid = name[len(_WRITING):].split("-")[1]
                if pid.isdigit() and int(pid) != os.getpid() and not process_alive(int(pid)):
                    shutil.rmtree(path, ignore_errors=True)
            elif _confirmed(name) and int(name, 16) < number:
                shutil.rmtree(path, ignore_errors=True)


def _listdir(folder: str) -> list[str]:
    with contextlib.suppress(OSError):
        return os.listdir(folder)
    return []


def _confirmed(name: str) -> bool:
    """Whether ``name`` is a confirmed save's folder (its batch number in 16 hex digits)."""
    return len(name) == 16 and all(c in "0123456789abcdef" for c in name)
