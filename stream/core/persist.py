"""An engine saved whole to a directory, and loaded back: its windows, its join's state in memory,
and its join's store on disk as it was at that moment, so that what it took in need not be fed
again (a Kafka worker's restart feeds only what came after, see ``kafka.checkpoints``).

The engine is pickled; a join's store on disk (``core.spill``) goes beside it as a RocksDB
checkpoint (``store-<n>``, its table files hard-linked), and a store loaded back starts from a
copy of that, so one save can be loaded many times. A save names the code it was made by
(``CODE``: a hash of the core's sources) and holds the engine's settings: loading it under other
code or settings raises ``Mismatch``, and the caller feeds the engine from its records instead.

>>> import tempfile
>>> from stream.core.records import parse_label, parse_prediction
>>> engine = Engine(Settings(windows=[]))
>>> engine.receive(parse_prediction({"request_id": "r1", "model": "m", "timestamp": 1.7e9, "prediction": "a"}))
>>> folder = tempfile.mkdtemp()
>>> save_engine(engine, folder + "/saved")
>>> loaded = load_engine(folder + "/saved", Settings(windows=[]))
>>> loaded.pending()
(1, 0)
>>> load_engine(folder + "/saved", Settings(windows=[], join_ttl_s=60))
Traceback (most recent call last):
...
stream.core.persist.Mismatch: saved with other settings
"""

from __future__ import annotations

import copyreg
import hashlib
import io
import itertools
import os
import pickle
from typing import Any

from stream.core.engine import Engine
from stream.core.settings import Settings
from stream.core.spill import SpillStore

__all__ = ["CODE", "Mismatch", "load_engine", "save_engine"]

_CORE = os.path.dirname(os.path.abspath(__file__))


def _code() -> str:
    digest = hashlib.sha256(b"mlmon engine save 1")
    for name in sorted(os.listdir(_CORE)):
        if name.endswith(".py"):
            with open(os.path.join(_CORE, name), "rb") as source:
                digest.update(name.encode() + b"\0" + source.read())
    return digest.hexdigest()[:32]


CODE = _code()  # what a save must have been made by to be loaded: the core's sources, hashed
_ENGINE = "engine.pickle"


class Mismatch(ValueError):
    """A save made by other code, or with other settings, than the loader's."""


def _count(counter: itertools.count[int]) -> tuple[Any, tuple[int]]:
    """An ``itertools.count`` (step 1) as its next value: Python stops pickling them itself in 3.14."""
    return itertools.count, (int(repr(counter)[len("count("):-1]),)


class _Saver(pickle.Pickler):
    """Pickles an engine; each join store it meets is checkpointed beside it instead."""

    def __init__(self, file: io.BufferedWriter, folder: str) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.dispatch_table = {**copyreg.dispatch_table, itertools.count: _count}
        self.folder = folder
        self.stores = 0

    def persistent_id(self, obj: Any) -> Any:
        if type(obj) is not SpillStore:
            return None
        name = f"store-{self.stores}"
        self.stores += 1
        obj.checkpoint(os.path.join(self.folder, name))
        return ("store", name, os.path.dirname(obj.path), obj.share)


class _Loader(pickle.Unpickler):
    def __init__(self, file: io.BufferedReader, folder: str) -> None:
        super().__init__(file)
        self.folder = folder

    def persistent_load(self, pid: Any) -> Any:
        kind, name, parent, share = pid
        if kind != "store":
            raise pickle.UnpicklingError(f"unknown persistent id {kind!r}")
        return SpillStore(parent, share, source=os.path.join(self.folder, name))


def save_engine(engine: Engine, folder: str) -> None:
    """Write ``engine`` to ``folder`` (made here; it must not exist). Outputs the engine holds
    (records, alerts, dead letters) are saved with it: drain them first."""
    os.makedirs(folder)
    with open(os.path.join(folder, _ENGINE), "wb") as file:
        file.write(CODE.encode() + b"\n")
        _Saver(file, folder).dump(engine)
        file.flush()
        os.fsync(file.fileno())


def load_engine(folder: str, settings: Settings) -> Engine:
    """The engine saved in ``folder``; ``Mismatch`` if other code saved it or its settings differ
    from ``settings``."""
    with open(os.path.join(folder, _ENGINE), "rb") as file:
        if file.readline().rstrip(b"\n") != CODE.encode():
            raise Mismatch("saved by other code")
        engine = _Loader(file, folder).load()
    if not isinstance(engine, Engine):
        raise Mismatch(f"not an engine: {type(engine).__name__}")
    if engine.config != settings and repr(engine.config) != repr(settings):  # (a NaN in each is not equal)
        raise Mismatch("saved with other settings")
    return engine
