"""What the worker publishes, within the limits, decided where every partition's figures meet.

The partials topic is keyed by model, so all of a model's partials reach one merger partition:
its *home*. Versions, segment keys and segment values are limited there (:mod:`core.admission`),
exactly, for the whole worker: one beyond its limit is published as ``__other__``.

How many models there are is known in no one place, so a home asks merger partition 0, the
*registry*, through the partials topic itself: ``{"ask": model, "home": h, "ts": t}`` goes to
partition 0, ``{"decided": model, "admitted": true|false}`` comes back to partition ``h``. The
registry admits models in the order the asks reach it (one partition: one order, the same after
any restart) up to ``max_models``; a model unseen for ``series_ttl`` gives its slot up to the
next one asked for (its home then forgets it: ``{"forget": model}``). Homes ask again as a
touch (an admitted model, every quarter of ``series_ttl``) or a retry (a refused one, every hour
of event time). A home holds a model's figures until its decision comes (one round trip through
Kafka), and publishes nothing of a refused model: one dead letter per model and hour says so.

Every decision is stored in the merge table (changelogged), so a restart decides nothing anew.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from typing import Any

import orjson

from stream.config import Config
from stream.core.admission import OTHER, Admission, Limits, Slots
from stream.kafka.formats import (
    ADMITTED_KEY,
    DECISION_KEY,
    REGISTRY_KEY,
    Ask,
    Decided,
    Forget,
    encode,
    read_registry,
    registry_value,
)

__all__ = ["REGISTRY_PARTITION", "RETRY_S", "Registry"]

REGISTRY_PARTITION = 0
RETRY_S = 3600.0  # event time between two asks for a refused model (and two of its dead letters)


class Registry:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.limits = Limits.of(config)
        self.decided: dict[str, bool] = {}  # at homes: model -> admitted
        self.asked_at: dict[str, float] = {}  # at homes: model -> event time it was last asked for
        self.waiting: set[str] = set()  # at homes: models asked for and not decided yet
        self.directed: list[tuple[int, bytes]] = []  # (partition of the partials topic, message) to send
        self._fresh()

    def _fresh(self) -> None:
        """The state a process starts from, before the table is read."""
        self.registry = Slots(self.limits.max_models, self.limits.series_ttl_s)
        self.homes: dict[str, int] = {}  # at the registry: model -> its home
        self.names = Admission(replace(self.limits, max_models=sys.maxsize))  # models: the registry decides
        self.stored: dict[str, int] = {}  # at homes: model -> how many names its stored admission held

    def rebuild(self, table: Any) -> None:
        self.decided.clear()
        self.asked_at.clear()
        self.waiting.clear()
        self._fresh()
        for key, value in table.items():
            if key == REGISTRY_KEY:
                known = read_registry(value)
                self.registry.restore({model: seen for model, (seen, _) in known.items()})
                self.homes.update({model: home for model, (_, home) in known.items()})
            elif key.startswith(DECISION_KEY):
                self.decided[key[len(DECISION_KEY):]] = bool(value)
            elif key.startswith(ADMITTED_KEY):
                self.names.restore(key[len(ADMITTED_KEY):], value)

    # ------------------------------------------------------------------ home

    def status(self, model: str, here: int, ts: float) -> bool | None:
        """Whether home ``here`` publishes ``model``'s figures (None: not decided yet, hold them);
        asks the registry when a decision is missing or due again."""
        decided = self.decided.get(model)
        if decided is None:
            self.waiting.add(model)
        asked = self.asked_at.get(model)
        due = asked is None or ts >= asked + (RETRY_S if decided is False else self.limits.series_ttl_s / 4)
        if due and (decided is not None or asked is None):
            self.asked_at[model] = ts
            self.directed.append((REGISTRY_PARTITION, encode(Ask(ask=model, home=here, ts=ts))))
        return decided

    def hold(self, model: str) -> None:
        """A model with windows stored and no decision yet (after a restart): its answer is on its way."""
        if model not in self.decided:
            self.waiting.add(model)

    def on_decided(self, table: Any, model: str, admitted: bool) -> bool:
        """The registry's answer; True when it changes what this home publishes."""
        changed = self.decided.get(model) is not admitted
        self.decided[model] = admitted
        self.waiting.discard(model)
        if changed:
            table[DECISION_KEY + model] = admitted
        return changed

    def on_forget(self, table: Any, model: str) -> None:
        """The registry gave the model's slot to another: it is asked for again when it comes back."""
        self.decided.pop(model, None)
        self.asked_at.pop(model, None)
        self.waiting.discard(model)
        self.names.forget(model)
        self.stored.pop(model, None)
        for key in (DECISION_KEY + model, ADMITTED_KEY + model):
            if table.get(key) is not None:
                del table[key]

    def fold(self, table: Any, partial: dict[str, Any], ts: float) -> tuple[dict[str, Any], str]:
        """The partial as published (a version, segment key or value beyond its limit as
        ``__other__``) and what it stands for, to keep apart the partials folded into one."""
        model, version, segment = partial["model"], partial["model_version"], partial["segment"]
        names = self.names
        names.model(model, ts)
        named = version if version == OTHER else names.version(model, version, ts)
        folded = segment
        if segment:
            (key, value), = segment.items()
            if key != OTHER and value != OTHER:
                pair = names.segment(model, key, value, ts)
                folded = {pair[0]: pair[1]}
        self._store_names(table, model)
        if named == version and folded == segment:
            return partial, ""
        return {**partial, "model_version": named, "segment": folded}, orjson.dumps([version, segment]).decode()

    def _store_names(self, table: Any, model: str) -> None:
        size = self.names.size(model)
        if self.stored.get(model) != size:  # a name came or went: stored, so a restart admits the same
            self.stored[model] = size
            table[ADMITTED_KEY + model] = self.names.export(model)

    # -------------------------------------------------------------- registry

    def on_ask(self, table: Any, model: str, home: int, ts: float) -> None:
        """At partition 0: admit ``model`` if it is known or there is room, and tell its home."""
        evicted: list[str] = []
        admitted = self.registry.admit(model, ts, evicted)
        for gone in evicted:
            self.directed.append((self.homes.pop(gone, home), encode(Forget(forget=gone))))
        if admitted:
            self.homes[model] = home
        table[REGISTRY_KEY] = registry_value(self.registry.seen, self.homes, home)
        self.directed.append((home, encode(Decided(decided=model, admitted=admitted))))

    def take_directed(self) -> list[tuple[int, bytes]]:
        directed, self.directed = self.directed, []
        return directed
