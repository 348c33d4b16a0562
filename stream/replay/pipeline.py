"""Replay of input files already in time order on two cores: a child process reads, decodes and
validates them (``_Inputs.events``, as one process would) while the engine here takes the events.
Inputs out of order are sorted first, which the engine must wait for, so they are read here: a
child would add its transfer to that wait (measured: no faster, up to 10% slower).

A child sends what one process would have done, in the order it would have done it: each event,
each dead letter at its place among the events (a record refused while the next event was being
read), and the bytes read, for the progress bar. So the engine sees the same calls in the same
order, and the output is the same, byte for byte (``tests/unit/replay/test_pipeline.py``).
Events travel as tuples of their fields, a batch per message; records are made again here.
"""

from __future__ import annotations

import dataclasses
import gc
import heapq
import operator
import pickle
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from stream.collector import THRESHOLDS
from stream.core.engine import Engine
from stream.core.records import Label, Prediction
from stream.replay import LABEL, PREDICTION, SOURCES, Event, _Inputs, _OutOfOrder
from stream.replay.progress import Progress
from stream.replay.sources import inputs

__all__ = ["MIN_BYTES", "child_events"]

MIN_BYTES = 16 << 20  # inputs smaller than this are replayed in one process (a child starts in about 0.3 s)
BATCH = 2048  # items per message
_EVENT, _DEAD, _READ, _END = 0, 1, 2, 3
_LENGTH = struct.Struct("<Q")  # each message: its length, then a pickled list of items
_FIELDS = [operator.attrgetter(*(f.name for f in dataclasses.fields(cls))) for cls in (Prediction, Label)]
_CLASSES: list[Callable[..., Prediction | Label]] = [Prediction, Label]


@dataclass(frozen=True)
class _Settings:
    """What reading the inputs needs of the config (``_Inputs`` reads these two)."""

    max_record_bytes: int
    max_future_s: float


class _Outbox:
    """Stands for the engine (its ``dead_letter``) and the progress bar (``read``) in the child,
    sending both, with the events, to the parent in order."""

    def __init__(self, out: IO[bytes], bar: bool) -> None:
        self.out, self.bar = out, (True if bar else None)
        self.items: list[tuple[Any, ...]] = []

    def dead_letter(self, source: str, raw: Any, reason: str, **where: Any) -> None:
        self._put((_DEAD, source, raw, reason, where))

    def read(self, size_bytes: int) -> None:
        self._put((_READ, size_bytes))

    def event(self, event: Event) -> None:
        ts, kind, sequence, record = event
        self._put((_EVENT, ts, kind, sequence, _FIELDS[kind](record)))

    def _put(self, item: tuple[Any, ...]) -> None:
        self.items.append(item)
        if len(self.items) >= BATCH:
            self.flush()

    def flush(self) -> None:
        if self.items:
            message = pickle.dumps(self.items, protocol=pickle.HIGHEST_PROTOCOL)
            self.out.write(_LENGTH.pack(len(message)) + message)
            self.items = []

    def end(self, how: str, error: BaseException | None = None) -> None:
        self._put((_END, how, error))
        self.flush()
        self.out.flush()


def _read_inputs(out: IO[bytes], predictions: Any, labels: Any, settings: _Settings, format: str | None,
                 run_events: int, bar: bool) -> None:  # pragma: no cover - runs in the child
    box = _Outbox(out, bar)
    try:
        kinds = [_Inputs(kind, inputs(spec, SOURCES[kind], format), settings)  # type: ignore[arg-type]
                 for kind, spec in ((PREDICTION, predictions), (LABEL, labels))]
        for event in heapq.merge(*(kind.events(box, box, False, run_events) for kind in kinds)):  # type: ignore[arg-type]
            box.event(event)
        box.end("done")
    except _OutOfOrder:
        box.end("out of order")
    except BaseException as exc:  # the parent raises it
        try:
            pickle.dumps(exc)
        except Exception:
            exc = RuntimeError(f"{type(exc).__name__}: {exc}")
        box.end("error", exc)


def child_events(predictions: Any, labels: Any, config: Any, engine: Engine, progress: Progress,
                 format: str | None, run_events: int) -> Iterator[Event]:
    """The events of input files in time order, read by a child process (``python -m
    stream.replay.pipeline``: nothing of the caller's program runs again there); dead letters go
    to ``engine`` and bytes read to ``progress`` as the events around them are taken, as one
    process would have taken them. Raises ``_OutOfOrder`` as ``_Inputs.events`` does."""
    child = subprocess.Popen([sys.executable, "-m", "stream.replay.pipeline"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE)
    assert child.stdin is not None and child.stdout is not None
    try:
        child.stdin.write(pickle.dumps((predictions, labels, _Settings(config.max_record_bytes, config.max_future_s),
                                        format, run_events, progress.bar is not None)))
        child.stdin.close()
        while True:
            head = child.stdout.read(_LENGTH.size)
            if len(head) < _LENGTH.size:
                raise RuntimeError(f"the replay's reading process ended early (exit code {child.wait()})")
            for item in pickle.loads(child.stdout.read(_LENGTH.unpack(head)[0])):
                tag = item[0]
                if tag == _EVENT:
                    yield item[1], item[2], item[3], _CLASSES[item[2]](*item[4])
                elif tag == _DEAD:
                    engine.dead_letter(item[1], item[2], item[3], **item[4])
                elif tag == _READ:
                    progress.read(item[1])
                elif item[1] == "out of order":
                    raise _OutOfOrder
                elif item[1] == "error":
                    raise item[2]
                else:
                    return
    finally:
        child.stdout.close()
        if child.poll() is None:
            child.kill()
        child.wait()


if __name__ == "__main__":  # pragma: no cover - the child
    gc.set_threshold(*THRESHOLDS)  # see ``stream.collector``
    _read_inputs(sys.stdout.buffer, *pickle.loads(sys.stdin.buffer.read()))
