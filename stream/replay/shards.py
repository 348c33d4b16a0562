"""Replay on two cores: each of two processes replays the requests whose id hashes to its share, and
their windows' final states are merged into one record per window, as a Kafka worker's partitions
are (``core.merge``).

Every row is read by both processes, and its request id alone decoded (a row without one belongs
to the share its row number picks, which refuses it); a share's records go through the engine
as in one process. A request's predictions and labels meet in one share, so the join, the counts
and the health counters of the two add up to those of one process. A record's figures are the
same, and so is its stamp: a final record's time is the first sweep of the whole input, the two
shares' sweeps together, at or after the watermark that makes its window final.

A share cannot judge alone what one process judges from the order of all records, so shares take
every valid record, and note how many fall in each stretch of ``max_future_s / 2`` (``Occupancy``);
if the whole input has a record one process would refuse as stamped alone in the future (a broken
clock), replay runs again in one process. It runs in one process from the start when rules or
detectors judge revisions as they come, when revisions or a caller's clock are asked for, or when
the input is rows in memory. A rolling window's last pairs are the last of both shares' (each
keeps its own last ones), as the worker merges them. Each share admits the names it meets
(models, versions, segment keys and values, classes): when those of both together fit the limits,
neither share nor one process ever reached one; when they do not, replay runs again in one process.

The output differs from one process's only in the order of records emitted at the same time
(here by model, version, segment and window) and of dead letters (here by input and line), and in
the last bits of ``label_lag_sum_s``.
"""

from __future__ import annotations

import bisect
import dataclasses
import gc
import math
import os
import pickle
import subprocess
import sys
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from stream.collector import THRESHOLDS
from stream.core.engine import Engine
from stream.core.health import Health
from stream.core.merge import assemble, merge_states, record_figures_many, rolling_state
from stream.core.rules import rfc3339

if TYPE_CHECKING:
    from stream.config import Config
    from stream.replay import Collected, Sink, _Inputs

__all__ = ["SHARES", "Occupancy", "owner", "replay_shared"]

SHARES = 2


class _Id(msgspec.Struct):
    request_id: str


_IDS = msgspec.json.Decoder(_Id)


def owner(raw: Any, sequence: int, shares: int, max_bytes: int) -> int:
    """The share of a row (a JSONL line, or a CSV or Parquet row): by a hash of its request id
    (CRC-32 of its UTF-8, the same in every process), or by ``sequence`` when it has none to read."""
    request_id = None
    if type(raw) is bytes:
        if len(raw) <= max_bytes:
            try:  # noqa: SIM105 (per row: contextlib.suppress costs more than the decode)
                request_id = _IDS.decode(raw).request_id
            except (msgspec.DecodeError, msgspec.ValidationError):
                pass
    elif type(raw) is dict:
        request_id = raw.get("request_id")
    if type(request_id) is not str:
        return sequence % shares
    return zlib.crc32(request_id.encode("utf-8", "surrogatepass")) % shares


class Occupancy:
    """The records of one kind per time bucket of ``max_future_s / 2``: how many, the first and the
    last timestamp. Two records in one bucket are closer than ``max_future_s``, so the occupancy of
    the whole input (both shares' added) tells exactly whether one process would refuse a record as
    stamped alone in the future (``core.clock.judge_in_time_order``)."""

    def __init__(self, max_future_s: float) -> None:
        self.width_s = max_future_s / 2
        self.buckets: dict[int, list[float]] = {}  # bucket -> [count, first, last]

    def watch(self, events: Iterator[Any]) -> Iterator[Any]:
        """The events, each noted (at least cost in time order: a bucket's records one after another)."""
        buckets, width = self.buckets, self.width_s
        cell, start, end = [0, 0.0, 0.0], math.inf, -math.inf  # the bucket of the event before
        for event in events:
            ts = event[0]
            if not start <= ts < end:
                bucket = int(ts // width)
                start, end = bucket * width, (bucket + 1) * width
                found = buckets.get(bucket)
                if found is None:
                    buckets[bucket] = cell = [0, ts, ts]
                else:
                    cell = found
            cell[0] += 1
            if ts < cell[1]:
                cell[1] = ts
            elif ts > cell[2]:
                cell[2] = ts
            yield event

    def add(self, other: Occupancy) -> None:
        for bucket, (count, first, last) in other.buckets.items():
            cell = self.buckets.get(bucket)
            if cell is None:
                self.buckets[bucket] = [count, first, last]
            else:
                cell[0] += count
                cell[1], cell[2] = min(cell[1], first), max(cell[2], last)

    def refuses(self, max_future_s: float) -> bool:
        """Whether one process would refuse any record: one alone in its bucket, more than
        ``max_future_s`` after the record before it and before the one after it (or last)."""
        cells = [self.buckets[b] for b in sorted(self.buckets)]
        for i, (count, ts, _) in enumerate(cells):
            if count == 1 and i > 0 and ts - cells[i - 1][2] > max_future_s and (
                    i + 1 == len(cells) or cells[i + 1][1] - ts > max_future_s):
                return True
        return False


@dataclass
class _Share:
    """What a share's process hands back."""

    partials: list[dict[str, Any]]
    dead_letters: list[dict[str, Any]]
    health: Health
    sweeps: list[float]
    occupancy: list[Occupancy]  # per kind (none when max_future_s is 0: nothing is judged)
    reached: float
    names: set[tuple[Any, ...]]
    sorted: bool


def shardable(config: Config, kinds: list[_Inputs], final_only: bool, clock: Any, processes: int | None) -> bool:
    if processes == 1 or clock is not None or not final_only or config.rules or config.detectors:
        return False
    if 0 < config.max_future_s < 60:  # buckets of under 30 s (see ``Occupancy``): too many to count
        return False
    files = [found for kind in kinds for found in kind.found]
    if any(found.path is None for found in files):  # rows in memory
        return False
    if processes is None:
        from stream.replay.pipeline import MIN_BYTES

        if sum(found.size_bytes for found in files) < MIN_BYTES or (os.cpu_count() or 1) < 2:
            return False
    try:
        pickle.dumps(config)
    except Exception:
        return False
    return True


def replay_share(predictions: Any, labels: Any, config: Config, share: int, format: str | None, quiet: bool,
                 run_events: int) -> _Share:
    """Replay one share into final partials (in this process)."""
    from stream.replay import Collected, _run

    engine, sink, sort, kinds = _run(predictions, labels, config, Collected, None, format, True, quiet, run_events,
                                     1, share=(share, SHARES))
    assert isinstance(sink, Collected)
    names = engine.admission.names() | {("class", name, c) for name, model in engine.models.items()
                                        if model.classes is not None for c in model.classes.names}
    occupancy = [kind.occupancy for kind in kinds if kind.occupancy is not None]
    return _Share(sink.metrics, sink.dead_letters, engine.health, engine.sweeps or [], occupancy, engine.clock(),
                  names, sort)


def replay_shared(predictions: Any, labels: Any, config: Config, open_sink: Callable[[], Sink | Collected],
                  format: str | None, quiet: bool, run_events: int
                  ) -> tuple[Engine, Sink | Collected, bool] | None:
    """Replay in two shares (this process and a child), merged into ``open_sink``'s sink; None when
    it must run in one process (see the module)."""
    child = subprocess.Popen([sys.executable, "-c", "from stream.replay.shards import child; child()"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert child.stdin is not None and child.stdout is not None
    try:
        child.stdin.write(pickle.dumps((predictions, labels, config, 1, format, True, run_events)))
        child.stdin.close()
        mine = replay_share(predictions, labels, config, 0, format, quiet, run_events)
        try:
            answer = pickle.load(child.stdout)
        except (EOFError, pickle.UnpicklingError):
            raise RuntimeError(f"the replay's second process ended early (exit code {child.wait()})") from None
        if isinstance(answer, BaseException):
            raise answer
    finally:
        child.stdout.close()
        if child.poll() is None:
            child.kill()
        child.wait()
    shares = [mine, answer]
    for kind in range(len(mine.occupancy)):
        mine.occupancy[kind].add(answer.occupancy[kind])
        if mine.occupancy[kind].refuses(config.max_future_s):
            return None
    folded = ("refused_models", "folded_classes", "folded_segments", "folded_versions")
    if any(getattr(share.health, name) for share in shares for name in folded) or not _within_limits(
            config, mine.names | answer.names):
        return None
    engine = Engine(config)
    for field in dataclasses.fields(Health):
        name = field.name
        setattr(engine.health, name, _added(getattr(mine.health, name), getattr(answer.health, name)))
    engine.metric_records = _records(engine, shares)
    engine.dead_letters = sorted(mine.dead_letters + answer.dead_letters, key=_where)
    sink = open_sink()
    sink.drain(engine)
    return engine, sink, mine.sorted or answer.sorted


def _added(a: Any, b: Any) -> Any:
    return [x + y for x, y in zip(a, b, strict=True)] if isinstance(a, list) else a + b


def _within_limits(config: Config, names: set[tuple[Any, ...]]) -> bool:
    """Whether the names both shares admitted stay within every limit together (then neither share
    nor one process ever reached one)."""
    models = {n[1] for n in names if n[0] == "model"}
    versions: dict[str, int] = {}
    keys: dict[str, int] = {}
    classes: dict[str, int] = {}
    values: dict[tuple[str, str], int] = {}
    for kind, model, *rest in names:
        if kind == "class":
            classes[model] = classes.get(model, 0) + 1
        elif kind == "version":
            versions[model] = versions.get(model, 0) + 1
        elif kind == "key":
            keys[model] = keys.get(model, 0) + 1
        elif kind == "value":
            values[(model, rest[0])] = values.get((model, rest[0]), 0) + 1
    return (len(models) <= config.max_models and all(n <= config.max_versions_per_model for n in versions.values())
            and all(n <= config.max_segment_keys for n in keys.values())
            and all(n <= config.max_segment_values for n in values.values())
            and all(n <= config.max_classes for n in classes.values()))


def _records(engine: Engine, shares: list[_Share]) -> list[dict[str, Any]]:
    """One final record per window from the shares' partials, stamped as one process would have."""
    windows: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for share in shares:
        for partial in share.partials:
            window = partial["window"]
            key = (partial["model"], partial["model_version"], tuple(sorted(partial["segment"].items())),
                   window["name"], window.get("start"))
            windows.setdefault(key, []).append(partial)
    sweeps = sorted(s for share in shares for s in share.sweeps if math.isfinite(s))
    reached = max(share.reached for share in shares)
    merged = [(key, parts[0], rolling_state(parts, parts[0]["window"]["size_n"])
               if parts[0]["window"]["kind"] == "rolling" else merge_states(parts)) for key, parts in windows.items()]
    figures = record_figures_many([(head["model"], state) for _, head, state in merged], engine.book)
    out = []
    for (key, head, state), figured in zip(merged, figures, strict=True):
        final_at = engine.final_at(head["window"].get("end"))
        at = bisect.bisect_left(sweeps, final_at)
        stamp = sweeps[at] if at < len(sweeps) else reached
        out.append((stamp, final_at, key, assemble(head["model"], head["model_version"], head["segment"],
                                                   head["window"], state.predictions, figured, True, rfc3339(stamp))))
    out.sort(key=lambda item: item[:3])
    return [record for *_, record in out]


def _where(letter: dict[str, Any]) -> tuple[Any, ...]:
    source = letter.get("source")
    return (0 if source == "predictions" else 1, str(letter.get("file", "")),
            letter.get("line", letter.get("row", 0)))


def child() -> None:  # pragma: no cover - runs in the child
    """A share's process: its arguments (pickled) on stdin, its ``_Share`` (pickled) on stdout."""
    gc.set_threshold(*THRESHOLDS)
    out = sys.stdout.buffer
    try:
        answer: Any = replay_share(*pickle.loads(sys.stdin.buffer.read()))
    except BaseException as exc:  # the parent raises it
        try:
            pickle.dumps(exc)
            answer = exc
        except Exception:
            answer = RuntimeError(f"{type(exc).__name__}: {exc}")
    pickle.dump(answer, out, protocol=pickle.HIGHEST_PROTOCOL)
    out.flush()

