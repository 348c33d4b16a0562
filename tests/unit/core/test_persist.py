"""An engine saved and loaded back (``core.persist``) goes on as if it had never stopped: on every
generated stream, cut anywhere, with its join's state in memory or mostly on disk, it gives what
an engine that took everything without a stop gives."""

from __future__ import annotations

import dataclasses
import math
import os
import random
import shutil
import tempfile
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.config import Config
from stream.core.engine import Engine
from stream.core.persist import Mismatch, load_engine, save_engine
from stream.core.records import Label, Prediction
from stream.core.slots import PAIRED
from tests.unit.core.test_ingest import configured, outcome, parsed, records, request, setting
from tests.unit.core.test_spill import budget


def run(config: Config, events: list[Prediction | Label], partials: bool, cut: int, stop: bool, folder: str) -> Any:
    """``events`` taken 7 at a time as the worker takes them (event time moved after each batch),
    flushed after batch ``cut`` and, if ``stop``, saved and loaded back there; then finished."""
    engine = Engine(config, revisions=True, emit_partials=partials)
    latest = -math.inf
    for number, start in enumerate(range(0, len(events), 7)):
        batch = events[start:start + 7]
        engine.take_many(batch)
        latest = max([latest, *(r.timestamp for r in batch)])
        engine.observe(latest - 15)
        if number == cut:
            engine.flush()
        if number == cut and stop:
            saved = os.path.join(folder, f"saved-{number}")
            save_engine(engine, saved)
            closed(engine)
            engine = load_engine(saved, config)
            shutil.rmtree(saved)  # a loaded engine's store is a copy: the save can go
    engine.finish()
    found = outcome(engine)
    closed(engine)
    return found


def closed(engine: Engine) -> None:
    """The engine's store closed and removed now, not when the collector finds the engine."""
    if engine.join.store is not None:
        engine.join.store.close()


@pytest.mark.slow
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests=st.lists(request, min_size=1, max_size=40), options=setting, seed=st.integers(0, 2**32 - 1),
       entries=st.sampled_from([0, 2, 20]), partials=st.booleans(), cut=st.integers(0, 12))
def test_an_engine_saved_and_loaded_goes_on_as_one_that_never_stopped(
        requests: list[dict[str, Any]], options: dict[str, Any], seed: int, entries: int, partials: bool,
        cut: int) -> None:
    folder = tempfile.mkdtemp()
    try:
        config = dataclasses.replace(configured(options), join_store_dir=folder)
        if entries:
            config.join_memory_mb = budget(entries)  # most of the join's state on disk
        events = parsed(records(requests))
        random.Random(seed).shuffle(events)
        assert run(config, events, partials, cut, True, folder) == run(config, events, partials, cut, False, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_a_loaded_join_tells_pairs_by_their_marker_and_its_store_is_its_own(tmp_path: Any) -> None:
    config = Config(windows=[], join_memory_mb=budget(12), join_store_dir=str(tmp_path / "stores"))
    engine = Engine(config)
    for i in range(0, 1000, 100):  # in ten buckets of deadlines: the first ones move to disk
        engine.take_many(parsed([{"request_id": f"r{i}", "model": "m", "timestamp": 1.7e9 + i, "prediction": "a"},
                                 {"request_id": f"r{i}", "timestamp": 1.7e9 + i + 1, "label": "a"}]))
    save_engine(engine, str(tmp_path / "saved"))
    loaded = load_engine(str(tmp_path / "saved"), config)
    slots = [slot for slot in loaded.join.ids.values() if type(slot) is tuple]
    assert slots and all(slot[0] is PAIRED for slot in slots)
    assert loaded.join.store is not None and engine.join.store is not None
    assert loaded.join.store.path != engine.join.store.path
    assert loaded.store_status().pending == engine.store_status().pending
    again = load_engine(str(tmp_path / "saved"), config)  # a save loads as often as asked
    assert again.pending() == engine.pending()


def test_a_save_made_by_other_code_or_settings_is_refused(tmp_path: Any) -> None:
    config = Config(windows=[])
    save_engine(Engine(config), str(tmp_path / "saved"))
    with pytest.raises(Mismatch, match="settings"):
        load_engine(str(tmp_path / "saved"), dataclasses.replace(config, join_ttl_s=60))
    path = tmp_path / "saved" / "engine.pickle"
    path.write_bytes(b"0" * 32 + path.read_bytes()[32:])
    with pytest.raises(Mismatch, match="code"):
        load_engine(str(tmp_path / "saved"), config)
