"""Saved partition engines (``kafka.checkpoints``): a restart loads each partition's latest
confirmed save and feeds it only the batches stored after it, and ends where a rebuild from every
stored record ends; a save that was not confirmed, or was made with other settings, is not used."""

from __future__ import annotations

import dataclasses
import math
import random
from typing import Any

import orjson

from stream.config import Config
from stream.kafka.formats import batch_key, read_batch_key
from stream.kafka.join_agent import Join
from stream.kafka.routing import partition_of

START = 1_767_225_600.0


class Table(dict[str, Any]):
    """The batch table's stand-in, counting the batches read."""

    reads = 0

    def __getitem__(self, key: str) -> Any:
        if key.startswith("batch/"):
            self.reads += 1
        return super().__getitem__(key)


def settings(tmp_path: Any, **changes: Any) -> Config:
    config = Config.from_mapping({"partitions": 2, "windows": ["tumbling 5m", "cumulative"], "join_ttl": "1h",
                                  "data_dir": str(tmp_path), "checkpoint_interval": "10s", **changes})
    config.join_memory_mb = 0.002  # most pending state on disk
    return config


def feed(join: Join, table: Table, first: int, count: int, seed: int) -> None:
    """Requests ``first`` to ``first + count``: a prediction each, a label for most (some twice,
    with other values), on their own partitions, saved as one batch per partition."""
    rng = random.Random(seed)
    config = join.config
    for i in range(first, first + count):
        rid = f"r{i}"
        p = partition_of(rid, config.partitions)
        ts = START + i * 7
        join.handle(config.predictions_topic, p, i, orjson.dumps(
            {"request_id": rid, "model": "m", "timestamp": ts, "prediction": rng.choice("ab"),
             "scores": {"a": 0.6, "b": 0.4}}))
        for n in range(rng.choice([0, 1, 1, 1, 2])):
            join.handle(config.labels_topic, p, 2 * i + n, orjson.dumps(
                {"request_id": rid, "timestamp": ts + rng.randint(1, 5000), "label": rng.choice("ab")}))
    for p in range(config.partitions):
        join.save(table, p)
    join.outputs()


def final_state(join: Join) -> dict[int, Any]:
    """Each partition's pending counts and health, and its windows' final partials once finished."""
    out = {}
    for p, engine in sorted(join.engines.items()):
        pending, health = engine.pending(), dataclasses.asdict(engine.health)
        engine.metric_records.clear()
        engine.finish()
        out[p] = (pending, health, sorted(orjson.dumps(r, option=orjson.OPT_SORT_KEYS) for r in engine.metric_records))
    return out


def test_a_restart_loads_the_saved_engines_and_feeds_them_only_the_batches_stored_since(tmp_path: Any) -> None:
    config = settings(tmp_path)
    join, table = Join(config), Table()
    join.stale = False
    feed(join, table, 0, 300, seed=1)
    join.checkpoint(now=1000.0)  # due after 10 s: one partition a call
    join.checkpoint(now=1001.0)
    assert len(join.checkpoints.unconfirmed) == 2
    join.checkpoints.confirm(list(join.checkpoints.unconfirmed))
    feed(join, table, 300, 200, seed=2)  # after the saves: one more batch per partition
    join.checkpoint(now=1002.0)  # not due again yet
    assert not join.checkpoints.unconfirmed

    table.reads = 0
    restarted = Join(config)
    restarted.rebuild(table)
    assert table.reads == 2  # the batch stored after each partition's save
    full = Join(dataclasses.replace(config, checkpoint_interval_s=0))  # no saves: every stored record
    table.reads = 0
    full.rebuild(table)
    assert table.reads == 4
    found, expected = final_state(restarted), final_state(full)
    assert {p: (s[0], s[2]) for p, s in found.items()} == {p: (s[0], s[2]) for p, s in expected.items()}
    for p, (_, health, _) in expected.items():  # a saved engine counted the duplicates it was not given to store
        extra = {k: found[p][1][k] - v for k, v in health.items() if found[p][1][k] != v}
        assert set(extra) <= {"labels", "duplicate_labels"} and extra.get("labels") == extra.get("duplicate_labels")


def test_a_save_not_confirmed_or_made_with_other_settings_is_not_loaded(tmp_path: Any) -> None:
    config = settings(tmp_path)
    join, table = Join(config), Table()
    join.stale = False
    feed(join, table, 0, 100, seed=3)
    join.checkpoint(now=1000.0)
    join.checkpoint(now=1001.0)
    restarted = Join(config)
    restarted.rebuild(table)  # unconfirmed: every stored record fed
    assert table.reads == 2 and restarted.checkpoints.saved == {}
    join.checkpoints.confirm(list(join.checkpoints.unconfirmed))
    other = Join(settings(tmp_path, join_ttl="2h"))
    table.reads = 0
    other.rebuild(table)
    assert table.reads == 2 and other.checkpoints.saved == {}
    table.reads = 0
    Join(config).rebuild(table)
    assert table.reads == 0


def test_a_partition_is_saved_again_only_once_its_batches_moved_on(tmp_path: Any) -> None:
    config = settings(tmp_path)
    join, table = Join(config), Table()
    join.stale = False
    feed(join, table, 0, 50, seed=4)
    for now in (1000.0, 1001.0, 1100.0, 1200.0):
        join.checkpoint(now)
    assert sorted(p for p, _, _ in join.checkpoints.unconfirmed) == [0, 1]
    assert math.isfinite(min(join.checkpoints.next_due.values()))


def test_a_batch_another_worker_wrote_meanwhile_is_fed_whatever_its_number(tmp_path: Any) -> None:
    """Another worker held partition 0 for a while (its clock behind: its batch numbered below
    the save's own), then gave it back: its batch is not in the save, so it is fed."""
    config = settings(tmp_path)
    join, table = Join(config), Table()
    join.rebuild(table)
    feed(join, table, 0, 100, seed=5)
    join.checkpoint(now=1000.0)
    join.checkpoint(now=1001.0)
    join.checkpoints.confirm(list(join.checkpoints.unconfirmed))
    other, elsewhere = Join(config), Table()
    other.rebuild(elsewhere)
    feed(other, elsewhere, 100, 60, seed=6)
    for key, value in elsewhere.items():
        if key.startswith("batch/0/"):
            behind = batch_key(0, join.floors.get(0, 0) + 1, other.writer, read_batch_key(key).latest_ts or 0.0)
            assert join.floors.get(0, 0) < read_batch_key(behind).number < join.numbers[0]
            table[behind] = value
    table.reads = 0
    restarted = Join(config)
    restarted.rebuild(table)
    assert table.reads == 1 and restarted.checkpoints.saved  # that batch alone
    full = Join(dataclasses.replace(config, checkpoint_interval_s=0))
    full.rebuild(table)
    found, expected = final_state(restarted), final_state(full)
    assert {p: (s[0], s[2]) for p, s in found.items()} == {p: (s[0], s[2]) for p, s in expected.items()}
