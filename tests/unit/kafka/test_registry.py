"""The registry of models the worker publishes: asks and answers between merger partitions, slots
given up by idle models, folding at a model's home, and all of it the same after a restart."""

from __future__ import annotations

from typing import Any

import orjson

from stream.config import Config
from stream.core.admission import OTHER
from stream.kafka.formats import DECISION_KEY, REGISTRY_KEY
from stream.kafka.registry import REGISTRY_PARTITION, Registry

DAY = 86400.0


def messages(registry: Registry) -> list[tuple[int, dict[str, Any]]]:
    """What the registry sent, as an earlier version reads it (without the kind and format version
    that messages name now: see kafka.formats)."""
    return [(partition, {k: v for k, v in orjson.loads(body).items() if k not in ("kind", "v")})
            for partition, body in registry.take_directed()]


def answer(registry: Registry, table: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    """The registry's answers to the asks waiting (as partition 0 would handle them)."""
    for partition, body in messages(registry):
        assert partition == REGISTRY_PARTITION
        registry.on_ask(table, body["ask"], body["home"], body["ts"])
    return messages(registry)


def test_a_home_asks_once_holds_until_answered_and_the_registry_admits_first_come() -> None:
    config = Config.from_mapping({"max_models": 2, "series_ttl": "7d", "join_ttl": "1h"})
    registry, table = Registry(config), {}
    assert registry.status("a", 3, 0.0) is None and registry.status("a", 3, 1.0) is None  # asked once
    assert registry.status("b", 1, 0.0) is None and registry.status("c", 2, 0.0) is None
    answers = answer(registry, table)
    assert answers == [(3, {"decided": "a", "admitted": True}), (1, {"decided": "b", "admitted": True}),
                       (2, {"decided": "c", "admitted": False})]
    for _home, body in answers:
        registry.on_decided(table, body["decided"], body["admitted"])
    assert (registry.status("a", 3, 2.0), registry.status("c", 2, 2.0)) == (True, False)
    assert messages(registry) == []  # neither a touch nor a retry due yet
    assert registry.status("c", 2, 3601.0) is False
    assert messages(registry) == [(0, {"ask": "c", "home": 2, "ts": 3601.0})]  # a refused model asks again hourly


def test_an_idle_model_gives_its_slot_up_and_its_home_forgets_it() -> None:
    config = Config.from_mapping({"max_models": 1, "series_ttl": "2d", "join_ttl": "1h"})
    registry, table = Registry(config), {}
    registry.on_ask(table, "old", 1, 0.0)
    registry.on_ask(table, "new", 2, 1 * DAY)
    assert messages(registry)[1:] == [(2, {"decided": "new", "admitted": False})]
    registry.on_ask(table, "new", 2, 3 * DAY)  # old unseen for more than 2 days
    assert messages(registry) == [(1, {"forget": "old"}), (2, {"decided": "new", "admitted": True})]
    assert set(table[REGISTRY_KEY]) == {"new"}
    registry.on_decided(table, "old", True)
    registry.on_forget(table, "old")
    assert DECISION_KEY + "old" not in table and "old" not in registry.decided


def test_versions_and_segments_fold_at_the_home_and_a_restart_folds_the_same() -> None:
    config = Config.from_mapping({"max_versions_per_model": 1, "max_segment_values": 1})
    registry, table = Registry(config), {}

    def partial(version: str, segment: dict[str, str]) -> dict[str, Any]:
        return {"model": "m", "model_version": version, "segment": segment}

    assert registry.fold(table, partial("v1", {}), 0.0) == (partial("v1", {}), "")
    folded, stands_for = registry.fold(table, partial("v2", {"k": "x"}), 0.0)
    assert folded == partial(OTHER, {"k": "x"}) and orjson.loads(stands_for) == ["v2", {"k": "x"}]
    assert registry.fold(table, partial("v1", {"k": "y"}), 0.0)[0] == partial("v1", {"k": OTHER})
    restarted = Registry(config)
    restarted.rebuild(table)
    for version, segment in (("v2", {"k": "y"}), ("v1", {"k": "x"})):  # another order: the same names
        assert restarted.fold(table, partial(version, segment), 1.0)[0] == registry.fold(
            table, partial(version, segment), 1.0)[0]
    assert restarted.fold(table, partial(OTHER, {"k": OTHER}), 1.0) == (partial(OTHER, {"k": OTHER}), "")
