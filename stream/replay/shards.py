"""Replay in shares: each of two processes replays the requests whose id hashes to its shares, and
the windows' final states of every share are merged into one record per window, as a Kafka
worker's partitions are (``core.merge``). One process alone replays its input as one share the
same way, so that it counts it held in memory (``bulk``) and writes what two processes write, in
the same order.

Every row is read by both processes, and its request id alone decoded (``ownership``; a row without
one belongs to the share its row number picks, which refuses it), each process reading the ids
of every other chunk for both (``exchange``); a share's records go through the engine as in one
process. A request's predictions and labels meet in one share, so the join, the counts
and the health counters of the shares add up to those of one process. A record's figures are the
same, and so is its stamp: a final record's time is the first sweep of the whole input, all
shares' sweeps together, at or after the watermark that makes its window final.

A share cannot judge alone what one process judges from the order of all records, so shares take
every valid record, and note how many fall in each stretch of ``max_future_s / 2`` (``Occupancy``);
if the whole input has a record one process would refuse as stamped alone in the future (a broken
clock), replay runs again in one process, record by record. It runs that way from the start when
rules or detectors judge revisions as they come, or when revisions or a caller's clock are asked
for; in one share when the input is rows in memory, smaller than ``pipeline.MIN_BYTES``, or on one
core (then only if it can be held in memory: ``bulk.fits``). A rolling window's last pairs are
the last of all shares' (each keeps its own last ones), as the worker merges them. Each share
admits the names it meets (models, versions, segment keys and values, classes): when those of all
shares together fit the limits, no share nor one process record by record ever reached one; when
they do not, replay runs again in one process, record by record.

A share's input of up to ``parts.share_bytes`` (half its process's part of ``join_memory_mb``) is
held in memory and counted as columns (``bulk``). An input larger than two such shares runs in as
many shares as it takes, each process's one after another: it reads every input once
and writes its shares' rows to a file each (``parts``, under ``join_store_dir`` when set), so that
memory follows a share, not the history, however late its labels come.

Each share writes its final partials and dead letters to a file as they come, and they are merged
from there, so memory follows the windows still open, not the history. The output differs from
one process's record by record only in the order of records final at the same time (here by the
time they became final, then model, version, segment and window, whatever the number of shares)
and of dead letters (here as the shares wrote them).
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import functools
import gc
import heapq
import math
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from stream.collector import THRESHOLDS
from stream.core.engine import Engine
from stream.core.health import Health
from stream.core.merge import assemble, merge_states, record_figures_many, rolling_state
from stream.core.rules import rfc3339
from stream.core.spill import remove_orphans
from stream.replay import parts
from stream.replay.exchange import Exchange, ExchangeFailed, keep, pair
from stream.replay.occupancy import Occupancy
from stream.replay.ownership import owners

if TYPE_CHECKING:
    from stream.config import Config
    from stream.replay import _Inputs
    from stream.replay.output import Collected, Sink

__all__ = ["SHARES", "Occupancy", "replay_shared"]

SHARES = 2
_FOLDER = "mlmon-shares-"  # a replay's folder for its shares' files: this, its process id, a dash, a unique part


@dataclass
class _Share:
    """What a share's process hands back (its records are in its spool)."""

    health: Health
    occupancy: list[Occupancy]  # per kind (none when max_future_s is 0: nothing is judged)
    reached: float
    names: set[tuple[Any, ...]]
    sorted: bool


class _Spool:
    """A share's output, written to a file as it comes, so that memory does not grow with the
    history: a frame per drain, (final partials, dead letters, sweeps done since the last frame),
    the partials those sweeps emitted in the same frame as them."""

    def __init__(self, path: Path) -> None:
        self.file = path.open("wb")

    def drain(self, engine: Engine) -> None:
        partials = [r for r in engine.metric_records if r["final"]]  # packed (``Engine(packed=True)``)
        sweeps = engine.sweeps or []
        if partials or engine.dead_letters or sweeps:
            pickle.dump((partials, engine.dead_letters, sweeps), self.file, protocol=pickle.HIGHEST_PROTOCOL)
        engine.metric_records, engine.dead_letters, engine.sweeps = [], [], []

    def close(self) -> None:
        self.file.close()


def _frames(path: Path) -> Iterator[tuple[list[dict[str, Any]], list[dict[str, Any]], list[float]]]:
    with path.open("rb") as spool:
        while True:
            try:
                yield pickle.load(spool)
            except EOFError:
                return


def shares_for(config: Config, kinds: list[_Inputs], final_only: bool, clock: Any, processes: int | None) -> int:
    """How many shares replay runs in: 2 or more (two processes; more when two shares would not
    fit in memory: ``parts``), 1 (this process alone, held in memory: ``bulk``), or 0 (the
    per-record path of ``replay._run``)."""
    if clock is not None or not final_only or config.rules or config.detectors:
        return 0
    if 0 < config.max_future_s < 60:  # buckets of under 30 s (see ``Occupancy``): too many to count
        return 0
    from stream.replay import bulk
    from stream.replay.pipeline import MIN_BYTES

    files = [found for kind in kinds for found in kind.found]
    one = 1 if bulk.fits(kinds, 1) else 0
    if processes == 1 or any(found.path is None for found in files):  # rows in memory: this process
        return one
    if processes is None and (sum(found.size_bytes for found in files) < MIN_BYTES or (os.cpu_count() or 1) < 2):
        return one
    try:
        pickle.dumps(config)
    except Exception:
        return one
    return parts.shares_needed(sum(kind.held_bytes for kind in kinds), config.join_memory_mb, SHARES)


def replay_share(predictions: Any, labels: Any, config: Config, process: tuple[int, int], shares: int,
                 format: str | None, quiet: bool, run_events: int, folder: Path, exchange: Exchange | None = None
                 ) -> _Share:
    """Replay the shares of this process (``process``: its index and how many there are; share k is
    process k's modulo that) into final partials, written to ``folder``'s ``share-<k>``. More
    shares than processes are first split into files (``parts``), then replayed one by one. With
    ``exchange`` (two processes, a share each), the owner pass is split with the other process."""
    from stream.replay import _Inputs, _run
    from stream.replay.progress import Progress
    from stream.replay.sources import inputs

    mine = list(range(process[0], shares, process[1]))
    split: list[dict[int, Path]] = []
    if exchange is not None and len(mine) > 1:
        exchange.close()
        exchange = None
    if len(mine) > 1:
        kinds = [_Inputs(kind, inputs(spec, source, format), config)
                 for kind, (spec, source) in enumerate(((predictions, "predictions"), (labels, "labels")))]
        progress = Progress(sum(found.size_bytes for kind in kinds for found in kind.found), quiet)
        max_bytes = config.max_record_bytes
        try:
            for kind in kinds:
                sources = [functools.partial(kind.numbered, index) for index in range(len(kind.found))]
                folder_kind = folder / f"{kind.source}-{process[0]}"
                folder_kind.mkdir()
                split.append(parts.split(sources, lambda raws, sequences: owners(raws, sequences, shares, max_bytes),
                                         mine, folder_kind, progress.read if progress.bar is not None else None))
        finally:
            progress.close()
    found = []
    for share in mine:
        engine, _, sort, kinds = _run(predictions, labels, config, functools.partial(_Spool, folder / f"share-{share}"),
                                      None, format, True, quiet or bool(split), run_events, 1, share=(share, shares),
                                      part=(split[0][share], split[1][share]) if split else None, exchange=exchange)
        names = engine.admission.names() | {("class", name, c) for name, model in engine.models.items()
                                            if model.classes is not None for c in model.classes.names}
        occupancy = [kind.occupancy for kind in kinds if kind.occupancy is not None]
        found.append(_Share(engine.health, occupancy, engine.clock(), names, sort))
        del engine, kinds
        for path in (split[0].pop(share), split[1].pop(share)) if split else ():
            path.unlink()
    return _joined(found)


def _joined(found: list[_Share]) -> _Share:
    """Shares' answers as one: health added, occupancies added, names together."""
    health = Health()
    for field in dataclasses.fields(Health):
        setattr(health, field.name, functools.reduce(_added, [getattr(share.health, field.name) for share in found]))
    occupancy = found[0].occupancy
    for answer in found[1:]:
        for kind in range(len(occupancy)):
            occupancy[kind].add(answer.occupancy[kind])
    return _Share(health, occupancy, max(share.reached for share in found), set().union(*(s.names for s in found)),
                  any(share.sorted for share in found))


def replay_shared(predictions: Any, labels: Any, config: Config, open_sink: Callable[[], Sink | Collected],
                  format: str | None, quiet: bool, run_events: int, shares: int = SHARES
                  ) -> tuple[Engine, Sink | Collected, bool] | None:
    """Replay in ``shares`` shares (this process, and a child for every second one), merged into
    ``open_sink``'s sink; None when it must run in one process, record by record (see the module)."""
    where = config.join_store_dir or tempfile.gettempdir()  # where state on disk goes: the shares' files too
    os.makedirs(where, exist_ok=True)
    remove_orphans(where, _FOLDER)  # what a killed replay left
    with tempfile.TemporaryDirectory(prefix=f"{_FOLDER}{os.getpid()}-", dir=where) as folder:
        processes = min(shares, SHARES)
        spools = [Path(folder) / f"share-{share}" for share in range(shares)]
        ends = pair() if processes == 2 and _Child.forks() else None  # the owner pass split between them
        try:
            child = None if processes == 1 else _Child((predictions, labels, config, (1, processes), shares, format,
                                                        True, run_events, Path(folder)), ends)
        except BaseException:
            for end in ends or ():
                end.close()
            raise
        mine = ends and keep(ends[0], ends[1])
        try:
            try:
                found = [replay_share(predictions, labels, config, (0, processes), shares, format, quiet, run_events,
                                      Path(folder), mine)]
            except ExchangeFailed:
                if child is not None:
                    child.answer()  # raises what ended it
                raise
            if child is not None:
                found.append(child.answer())
        finally:
            if mine is not None:
                mine.close()  # (closed already, unless its share failed first)
            if child is not None:
                child.close()
        every = _joined(found)
        if any(kind.refuses(config.max_future_s) for kind in every.occupancy):
            return None
        folded = ("refused_models", "folded_classes", "folded_segments", "folded_versions")
        if any(getattr(every.health, name) for name in folded) or not _within_limits(config, every.names):
            return None
        engine = Engine(config)
        engine.health = every.health
        sink = open_sink()
        try:
            _merge(engine, sink, spools, every.reached)
        finally:
            sink.close()  # as ``_run`` closes it: the caller gets it written
    return engine, sink, every.sorted


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


def _merge(engine: Engine, sink: Sink | Collected, spools: list[Path], reached: float) -> None:
    """The shares' spools into ``sink``: a window's partials merged into its record once every
    share's sweeps have passed the watermark that makes it final (each share sends a window's
    partial at its first sweep past that watermark, or never has it), stamped with the first sweep
    of both past it (or, if none, the end of input), as one process would have."""
    streams = [_frames(path) for path in spools]
    progress = [-math.inf] * len(spools)  # the last sweep read of each share (inf: all read)
    sweeps: list[list[float]] = [[] for _ in spools]
    pending: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    due: list[tuple[float, tuple[Any, ...]]] = []  # (final_at, window key), a heap
    while True:
        behind = [i for i, p in enumerate(progress) if p < math.inf]
        if behind:
            i = min(behind, key=progress.__getitem__)
            frame = next(streams[i], None)
            if frame is None:
                progress[i] = math.inf
                continue
            partials, dead, swept = frame
            for partial in partials:
                window = partial["window"]
                key = (partial["model"], partial["model_version"], tuple(sorted(partial["segment"].items())),
                       window["name"], window.get("start"))
                if key not in pending:
                    pending[key] = []
                    heapq.heappush(due, (engine.final_at(window.get("end")), key))
                pending[key].append(partial)
            engine.dead_letters += dead
            sweeps[i] += [s for s in swept if math.isfinite(s)]
            if swept:
                progress[i] = max(progress[i], swept[-1])
        horizon = min(progress)
        ready = []
        while due and due[0][0] <= horizon:
            final_at, key = heapq.heappop(due)
            ready.append((final_at, pending.pop(key)))
        engine.metric_records = _records(engine, ready, sweeps, reached)
        sink.drain(engine)
        if not behind:
            return


def _records(engine: Engine, ready: list[tuple[float, list[dict[str, Any]]]], sweeps: list[list[float]],
             reached: float) -> list[dict[str, Any]]:
    """The final records of windows whose partials are all in."""
    states = [rolling_state(partials, partials[0]["window"]["size_n"]) if partials[0]["window"]["kind"] == "rolling"
              else merge_states(partials) for _, partials in ready]
    figures = record_figures_many([(partials[0]["model"], state)
                                   for (_, partials), state in zip(ready, states, strict=True)], engine.book)
    out = []
    for (final_at, partials), state, figured in zip(ready, states, figures, strict=True):
        firsts = [share[at] for share in sweeps if (at := bisect.bisect_left(share, final_at)) < len(share)]
        stamp = min(firsts) if firsts else reached
        head = partials[0]
        out.append(assemble(head["model"], head["model_version"], head["segment"], head["window"], state.predictions,
                            figured, True, rfc3339(stamp), engine.config.sample))
    return out


class _Child:
    """The second share's process, given its arguments: forked when this process runs one thread
    (it starts at once, with all it needs imported), else a new interpreter (``child``)."""

    def __init__(self, args: tuple[Any, ...], ends: tuple[Exchange, Exchange] | None = None) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        self.pid = 0
        if self.forks():
            read, write = os.pipe()
            self.pid = os.fork()
            if self.pid == 0:  # pragma: no cover - runs in the child
                try:
                    os.close(read)
                    with os.fdopen(write, "wb") as out:
                        pickle.dump(_answer((*args, ends and keep(ends[1], ends[0]))), out,
                                    protocol=pickle.HIGHEST_PROTOCOL)
                finally:
                    os._exit(0)
            os.close(write)
            self.out: IO[bytes] = os.fdopen(read, "rb")
        else:
            assert ends is None, "the owner pass is split only with a forked process"
            self.process = subprocess.Popen([sys.executable, "-c", "from stream.replay.shards import child; child()"],
                                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            assert self.process.stdin is not None and self.process.stdout is not None
            self.process.stdin.write(pickle.dumps(args))
            self.process.stdin.close()
            self.out = self.process.stdout

    @staticmethod
    def forks() -> bool:
        """Whether the child is forked (else a new interpreter): when this process runs one thread."""
        return hasattr(os, "fork") and threading.active_count() == 1

    def answer(self) -> _Share:
        """Its share (raises what it raised)."""
        try:
            answer = pickle.load(self.out)
        except (EOFError, pickle.UnpicklingError):
            raise RuntimeError(f"the replay's second process ended early (exit code {self.close()})") from None
        if isinstance(answer, BaseException):
            raise answer
        return answer  # type: ignore[no-any-return]

    def close(self) -> int:
        """Stop it if it still runs; its exit code."""
        self.out.close()
        if self.process is not None:
            if self.process.poll() is None:
                self.process.kill()
            return self.process.wait()
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            return os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
        return 0


def _answer(args: tuple[Any, ...]) -> Any:  # pragma: no cover - runs in the child
    """A share's ``_Share``, or the exception it raised (one that pickles)."""
    try:
        return replay_share(*args)
    except BaseException as exc:  # the parent raises it
        try:
            pickle.dumps(exc)
            return exc
        except Exception:
            return RuntimeError(f"{type(exc).__name__}: {exc}")


def child() -> None:  # pragma: no cover - runs in the child
    """A share's process in a new interpreter: its arguments (pickled) on stdin, its ``_Share``
    (pickled) on stdout."""
    gc.set_threshold(*THRESHOLDS)
    out = sys.stdout.buffer
    pickle.dump(_answer(pickle.loads(sys.stdin.buffer.read())), out, protocol=pickle.HIGHEST_PROTOCOL)
    out.flush()
