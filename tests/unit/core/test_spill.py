"""Pending state beyond the join's memory budget (``join_memory_mb``) waits on disk
(``core.spill``): where a request's state lives never changes an outcome. A join or an engine
with a budget of a few entries gives what one without a bound gives, on every generated stream,
in every path (one record at a time, in batches, the worker's ``take_many``), and holds no more
than its budget in memory between batches."""

from __future__ import annotations

import dataclasses
import gc
import math
import os
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from stream.config import Config
from stream.core.engine import ENTRY_BYTES, Engine
from stream.core.join import JoinBuffer, is_pair
from stream.core.records import Label, Prediction
from stream.core.spill import SpillStore, key_bytes
from stream.errors import ConfigError
from tests.unit.core.test_ingest import configured, parsed, records, request, setting
from tests.unit.core.test_sampling import fed


def budget(entries: int) -> float:
    """``join_memory_mb`` that holds ``entries`` in memory."""
    return entries * ENTRY_BYTES / (1 << 20) + 1e-9


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests=st.lists(request, min_size=1, max_size=50), options=setting, seed=st.integers(0, 2**32 - 1),
       entries=st.sampled_from([1, 2, 5, 20]), how=st.sampled_from(["one by one", "in batches", "taken"]))
def test_an_engine_with_its_state_on_disk_counts_what_one_with_all_in_memory_counts(
        requests: list[dict[str, Any]], options: dict[str, Any], seed: int, entries: int, how: str) -> None:
    config = configured(options)
    bounded = dataclasses.replace(config, join_memory_mb=budget(entries))
    events = parsed(records(requests))
    random.Random(seed).shuffle(events)
    line = {id(r): i for i, r in enumerate(events)}
    assert fed(bounded, events, how, line) == fed(config, events, how, line)


Op = tuple[str, Any, Any, Any]

op = st.one_of(
    st.tuples(st.just("prediction"), st.integers(0, 12), st.integers(0, 300), st.integers(0, 2)),  # id, ts, model
    st.tuples(st.just("label"), st.integers(0, 12), st.integers(0, 300), st.sampled_from(["a", "b", 1])),
    st.tuples(st.just("expire"), st.integers(0, 40), st.none(), st.none()),  # the watermark moves this much
)


def played(join: JoinBuffer, ops: list[Op], batch: int, end: bool = True) -> list[Any]:
    """Every answer of ``join`` to ``ops``: outcomes, what a call replaced or shared, expiries,
    pending counts; ``batch``: records held (``hold``) that many at a time; ``end``: then the
    end of input (an infinite watermark)."""
    answers: list[Any] = []
    watermark = 0.0
    for start in range(0, len(ops), batch):
        chunk = ops[start:start + batch]
        join.hold([f"r{o[1]}" for o in chunk if o[0] != "expire"])
        for kind, a, b, c in chunk:
            if kind == "prediction":
                join.several = join.several or c > 0  # as the engine tells it, on meeting a second model
                found = join.add_prediction(f"r{a}", (float(b), f"p{b}"), c)
                answers.append((found, join.replaced if found[0].name == "REVISED" else None,
                                join.shared_with if found[0].name.startswith(("SHARED", "REVISED")) else None))
            elif kind == "label":
                found = join.add_label(f"r{a}", (float(b), c))
                answers.append((found, join.replaced if found[0].name == "REVISED" else None))
            else:
                watermark += a
                answers.append(swept(join.expire(watermark)))
            answers.append(join.pending())
        join.release()
        assert not join.max_entries or join.in_memory() <= join.max_entries
        held = sum(type(slot) is not int and not is_pair(slot) for slot in join.ids.values())
        assert join.pairs == sum(is_pair(slot) for slot in join.ids.values())
        assert (held + join.on_disk()[0], len(join.labels) + join.on_disk()[1]) == join.pending()
    if end:
        answers.append(swept(join.expire(math.inf)))
        answers.append(join.pending())
    return answers


def swept(found: tuple[list[Any], list[Any]]) -> tuple[list[Any], list[Any]]:
    """What a sweep resolved, in an order of its own (a bucket's ids on disk come in key order)."""
    return sorted(found[0], key=repr), sorted(found[1], key=repr)


@pytest.mark.slow
@settings(max_examples=400, deadline=None)
@given(ops=st.lists(op, max_size=80), entries=st.integers(1, 6), batch=st.sampled_from([1, 3, 10]),
       rule=st.sampled_from(["earliest", "latest"]), ttl=st.sampled_from([30, 100]))
def test_a_join_answers_alike_wherever_its_state_is(ops: list[Op], entries: int, batch: int, rule: str,
                                                     ttl: int) -> None:
    bounded = JoinBuffer(ttl, 20, duplicate_labels=rule, max_entries=entries)
    assert played(bounded, ops, batch) == played(JoinBuffer(ttl, 20, duplicate_labels=rule), ops, batch)
    event(f"on disk at some point: {bounded.store is not None}")
    assert bounded.stored == bounded.stored_labels == bounded.stored_predictions == 0  # the end resolves everything


def test_state_goes_to_disk_and_comes_back_by_batch_and_by_bucket() -> None:
    join = JoinBuffer(100, 10, max_entries=100)
    join.hold([])
    for i in range(1000):
        join.add_prediction(f"r{i}", (float(i % 50), "a"))
    join.release()
    assert join.in_memory() <= 100 and join.stored >= 900 and join.status().disk_bytes > 0
    join.hold([f"r{i}" for i in range(0, 1000, 2)])  # one read brings a batch's requests back
    stored = join.stored
    assert stored <= 1000 - 500 and all(join.add_label(f"r{i}", (60.0, "a"))[0].name == "JOINED"
                                        for i in range(0, 1000, 2))
    join.release()
    expired, _ = join.expire(151.0)  # every prediction's deadline passed: its bucket comes back
    assert len(expired) == 500 and join.pending() == (0, 0)


def test_sweeps_read_back_from_disk_only_what_they_must() -> None:
    """A pair is not read back at its prediction's deadline (it is listed at its own), and a lone
    tombstone is removed without being read."""
    join = JoinBuffer(100, 10, max_entries=10)
    join.hold([])
    for i in range(100):
        join.add_prediction(f"r{i}", (0.0, "a"))
    join.release()
    join.hold([f"r{i}" for i in range(100)])
    for i in range(100):
        join.add_label(f"r{i}", (50.0, "a"))  # the pairs' deadline: 150
    join.release()
    assert join.store is not None and join.stored > 80
    reads = sum(join.store.reads.counts)
    join.expire(115.0)  # the predictions' bucket: nothing to read
    assert sum(join.store.reads.counts) == reads and join.stored > 80
    join.expire(161.0)  # the pairs' own bucket: read back, and become lone tombstones on disk
    assert join.stored == 0 and join.tombstones_stored
    before = join.store.reads.counts[:]
    join.expire(271.0)  # buried: one batched read (of the states that are more than a tombstone)
    assert join.store.reads.counts != before and not any(_stored_keys(join.store))


def _stored_keys(store: SpillStore) -> list[bytes]:
    return list(store._db.keys())  # what the store holds, every kind of key


def test_the_store_is_removed_with_its_join(tmp_path: Any) -> None:
    join = JoinBuffer(100, 10, max_entries=1, store_dir=str(tmp_path / "state"))
    for i in range(5):
        join.add_prediction(f"r{i}", (float(i), "a"))
    assert join.store is not None and os.listdir(tmp_path / "state")
    del join
    gc.collect()
    assert os.listdir(tmp_path / "state") == []


def test_keys_of_both_kinds_stay_apart() -> None:
    store = SpillStore()
    keys = [key_bytes(k) for k in (1, "1", 2**128 - 1, "\udc80", "")]
    assert len(set(keys)) == len(keys)
    store.put_states([(k, k) for k in keys])
    assert store.take_states(keys) == keys and store.take_states(keys) == [None] * len(keys)
    store.close()
    assert not os.path.exists(store.path)


def test_an_engine_s_budget_is_its_share_of_join_memory_mb() -> None:
    config = Config.from_mapping({"join_memory_mb": 2})
    assert Engine(config).join.max_entries == 2 * (1 << 20) // ENTRY_BYTES
    assert Engine(config, memory_share=0.25).join.max_entries == (1 << 19) // ENTRY_BYTES
    for bad in (0, -1, "lots", math.nan, True):
        with pytest.raises(ConfigError, match="join_memory_mb"):
            Config.from_mapping({"join_memory_mb": bad})


def test_an_engine_over_its_budget_keeps_counting_exactly() -> None:
    """Many requests, labels an hour late in a shuffled order: the same final records and health."""
    rng = random.Random(5)
    events: list[Any] = []
    for i in range(3000):
        ts = 1.7e9 + i
        events.append(Prediction(f"r{i}", "m", "v1", ts, "ab"[i % 2], None, ()))
    events += [Label(f"r{i}", 1.7e9 + i + rng.uniform(0, 3600), "ab"[i % 3 % 2]) for i in range(0, 3000, 1)]
    events.sort(key=lambda r: r.timestamp)
    config = Config.from_mapping({"join_ttl": "2h", "watermark_lag": "2h"})
    bounded = Engine(dataclasses.replace(config, join_memory_mb=budget(300)), revisions=False)
    free = Engine(config, revisions=False)
    for engine in (bounded, free):
        for start in range(0, len(events), 256):
            engine.receive_many(events[start:start + 256])
    assert bounded.join.stored > 0 and bounded.join.in_memory() <= bounded.join.max_entries
    for engine in (bounded, free):
        engine.finish()
    assert bounded.metric_records == free.metric_records and bounded.health == free.health


def test_a_killed_process_s_store_goes_when_the_next_one_is_made(tmp_path: Any) -> None:
    import subprocess
    import sys

    code = ("import os, sys; from stream.core.spill import SpillStore; s = SpillStore(sys.argv[1]); "
            "print(s.path, flush=True); os._exit(0)")  # no finalizer runs: as after a SIGKILL
    left = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert os.path.isdir(left)
    store = SpillStore(str(tmp_path))
    assert not os.path.exists(left) and os.listdir(tmp_path) == [os.path.basename(store.path)]
    store.close()
