"""Replay's input split by request id into a file per share, so that a history too large to hold in
memory replays as shares that each fit in it (``bulk``), every input read once.

``shards`` runs an input of more than two shares of ``share_bytes`` as many shares, those of each
process one after another. Each process reads every input once and writes the rows of its own
shares (``ownership.owner``: a hash of the request id) to a file per share and kind (``split``); a
share then reads its rows from there (``frames``), with their row numbers, so that a dead letter
names the input's file and line as ever. A share's requests are whole in it (every record of a
request is in its share), so its join holds only its own, and the shares' final partials merge
into the records one process writes (``shards._merge``).

A file is a sequence of frames: a header (the input's index, the payload's length), then the
pickled row numbers and raw rows (JSON lines as bytes, CSV and Parquet rows as dicts) of up to
``FRAME_ROWS`` rows of that input, in the input's order.

>>> share_bytes(1024.0, 2), shares_needed(10 << 30, 1024.0, 2)
(268435456, 40)
"""

from __future__ import annotations

import math
import pickle
import struct
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

__all__ = ["FRAME_ROWS", "MAX_SHARES", "MIN_SHARE_BYTES", "frames", "share_bytes", "shares_needed", "split"]

FRAME_ROWS = 2048  # rows a share buffers before it writes them: memory is this times the shares of a process
MIN_SHARE_BYTES = 16 << 20  # however small the budget: more shares would cost more time than they save memory
MAX_SHARES = 1024  # however large the input, at most this many shares (and files)
_HEADER = struct.Struct("<IQ")  # input index, payload bytes


def share_bytes(join_memory_mb: float, processes: int) -> int:
    """The input a share may hold in memory: half a process's part of ``join_memory_mb`` (a share's
    input held as columns takes about twice its size), but no less than ``MIN_SHARE_BYTES`` (each
    share costs a pass over the event time it spans)."""
    return int(max(MIN_SHARE_BYTES, join_memory_mb * (1 << 20) / processes / 2))


def shares_needed(total_bytes: int, join_memory_mb: float, processes: int) -> int:
    """Shares for ``total_bytes`` of input: ``processes`` when each process's share fits
    (``share_bytes``), or when none can; else enough that each does, a multiple of ``processes``."""
    size = share_bytes(join_memory_mb, processes)
    if size <= 0 or total_bytes <= size * processes:
        return processes
    per_process = math.ceil(total_bytes / size / processes)
    return min(MAX_SHARES, per_process * processes)


def split(sources: Sequence[Callable[[], Iterator[tuple[list[int], list[Any], int]]]],
          owners: Callable[[list[Any], list[int]], list[int]], mine: list[int], folder: Path,
          read: Callable[[int], None] | None) -> dict[int, Path]:
    """The rows of ``sources`` (each input's chunks of ``(sequences, raws, bytes)``, in order)
    whose share (``owners(raws, sequences)``, a share per row) is one of ``mine``, written to a
    file per share in ``folder``; returns each share's file (written, even when empty). ``read``
    hears of every chunk's bytes."""
    paths = {share: folder / f"part-{share}" for share in mine}
    files: dict[int, IO[bytes]] = {}
    try:
        for share, path in paths.items():
            files[share] = path.open("wb")
        for index, source in enumerate(sources):
            held: dict[int, tuple[list[int], list[Any]]] = {share: ([], []) for share in mine}
            for sequences, raws, size in source():
                if read is not None:
                    read(size)
                for share, sequence, raw in zip(owners(raws, sequences), sequences, raws, strict=True):
                    found = held.get(share)
                    if found is None:
                        continue
                    found[0].append(sequence)
                    found[1].append(raw)
                    if len(found[0]) == FRAME_ROWS:
                        _write(files[share], index, found)
                        found[0].clear()
                        found[1].clear()
            for share, found in held.items():
                if found[0]:
                    _write(files[share], index, found)
    finally:
        for file in files.values():
            file.close()
    return paths


def frames(path: Path, index: int) -> Iterator[tuple[list[int], list[Any]]]:
    """(sequences, raws) of input ``index``'s rows in the share's file ``path``, in order, a frame
    at a time."""
    with path.open("rb") as file:
        while header := file.read(_HEADER.size):
            at, size = _HEADER.unpack(header)
            if at != index:
                file.seek(size, 1)
                continue
            sequences, raws = pickle.loads(file.read(size))
            yield sequences, raws


def _write(file: IO[bytes], index: int, found: tuple[list[int], list[Any]]) -> None:
    payload = pickle.dumps(found, protocol=pickle.HIGHEST_PROTOCOL)
    file.write(_HEADER.pack(index, len(payload)))
    file.write(payload)
