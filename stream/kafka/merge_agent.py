"""The merge agent's state and handlers: partials summed into metric records, and alerts.

It consumes the partials, partitioned by model: it keeps the latest partial per (window, input
partition) in a table, sums them at each heartbeat into one metric record per changed window,
evaluates the alert rules, and marks a window final once every input partition's watermark has
passed it. Absolute partials make replays and duplicates harmless. Detector rules get the pairs
themselves (see core.detector_book), judged at the watermark every input partition has passed.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import orjson

from stream.config import Config
from stream.core.admission import Refusals
from stream.core.custom import MetricBook
from stream.core.detector_book import DetectorBook
from stream.core.detectors import Cusum, DetectorRule
from stream.core.keys import record_key, segment_label
from stream.core.merge import merge_states, metric_record, rolling_state
from stream.core.records import raw_text
from stream.core.rules import RuleBook, RuleState, rfc3339
from stream.core.windows import WindowSpec, final_at
from stream.kafka.cumulative import cumulative_base, engine_windows
from stream.kafka.formats import (
    CUMULATIVE_KEY,
    DETECTORS_KEY,
    RULES_KEY,
    Ask,
    CumulativeBase,
    Decided,
    DetectorsEntry,
    Forget,
    Heartbeat,
    Pairs,
    PairsEntry,
    Partial,
    RuleEntry,
    decode,
    entry_home,
    entry_partials,
    final_entry,
    is_final,
    open_entry,
    pairs_key,
    partial_slot,
    read_value,
    stored,
)
from stream.kafka.join_agent import Output
from stream.kafka.registry import Registry

__all__ = ["CUMULATIVE", "Merge", "cumulative_key"]

log = logging.getLogger("mlmon.worker")

CUMULATIVE = WindowSpec("cumulative")


def _model_of(key: str) -> str:
    """The model of a window's record key (see core.keys.record_key)."""
    return str(orjson.loads(key)[0])


def cumulative_key(partial: dict[str, Any]) -> str:
    """The record key of the cumulative window of a partial's series."""
    return record_key({**partial, "window": CUMULATIVE.describe(0)})


class Merge:
    """The merge agent: latest partial per (window, input partition), summed into one record.

    State is kept per merger partition (the partition of the partials topic an event came from):
    a heartbeat on one partition closes only that partition's windows, since only there is it
    known to follow every partial sent before it.
    """

    def __init__(self, config: Config, on_alerts: Callable[[list[dict[str, Any]]], None] | None = None,
                 on_record: Callable[[dict[str, Any]], None] | None = None,
                 on_forget: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.on_alerts = on_alerts  # delivery beyond the alerts topic (Alertmanager, webhook)
        self.on_record = on_record  # the Prometheus exposition
        self.on_forget = on_forget  # a model that gave its slot up (the exposition drops it)
        self.registry = Registry(config)  # the limits: what is published (see registry)
        self.refused_partials = 0  # partials of models beyond max_models, not published
        self._refusals = Refusals(10 * config.max_models)  # refused models: a dead letter an hour each
        self.rules = RuleBook(config.rules)
        self.detectors: dict[int, DetectorBook] = defaultdict(lambda: DetectorBook(config.detectors))  # per merger
        # partition: its models' detectors (their pairs are judged at the watermark its heartbeats bring)
        self.stored_pairs: dict[int, list[tuple[float, str]]] = defaultdict(list)  # (latest done_ts, table key)
        self.book = MetricBook(config.positive_classes, config.custom_metrics)
        self.specs = {w.name: w for w in engine_windows(config.windows)}
        self.base = cumulative_base(config.windows)  # the tumbling spec cumulative windows are summed from
        self.hidden = self.base if self.base is not None and self.base not in config.windows else None
        self.members: dict[int, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))  # open base windows
        self.idle: dict[int, dict[int, bool]] = defaultdict(dict)  # merger part. -> input part. -> idle
        self.late_partials = 0  # partials of idle inputs for windows closed without them
        self._late_logged = -math.inf
        self.watermarks: dict[int, dict[int, float]] = defaultdict(dict)  # merger part. -> input part. -> wm
        self.open: dict[int, dict[str, float]] = defaultdict(dict)  # merger part. -> window key -> final at
        self.changed: dict[int, set[str]] = defaultdict(set)  # merger part. -> windows with new partials
        # The open windows' entries as last written to the table, so that a partial does not read
        # and decode its window's entry from the store again (every entry is still written there).
        self.entries: dict[str, dict[str, Any]] = {}
        self.stale = True

    def rebuild(self, table: Any) -> None:
        self.open.clear()
        self.entries.clear()
        self.changed.clear()
        self.members.clear()
        self.rules.states.clear()
        self.detectors.clear()
        self.stored_pairs.clear()
        self.registry.rebuild(table)
        pairs = []
        for key, entry in table.items():
            if key.startswith(DETECTORS_KEY):
                if "\x00" in key[len(DETECTORS_KEY):]:  # never in a model's name (see core.records)
                    pairs.append((key, read_value(entry, PairsEntry)))
                else:
                    saved = read_value(entry, DetectorsEntry)
                    self.detectors[saved.here].restore(key[len(DETECTORS_KEY):], stored(saved))
            elif key.startswith(RULES_KEY):
                for item in entry:
                    rule = read_value(item, RuleEntry)
                    self.rules.states[(rule.rule, tuple(rule.series))] = RuleState(**rule.state)
            elif not key.startswith("\x00") and not is_final(entry):
                partial = entry_partials(entry)[0]
                here = entry_home(entry)
                self.registry.hold(partial["model"])
                self.entries[key] = entry
                self.open[here][key] = self._final_at(partial)
                self.changed[here].add(key)  # emitted again: a crash may have come before it was
                if self._in_base(partial):
                    self.members[here][cumulative_key(partial)].add(key)
        for key, waiting in sorted(pairs):  # in the order they came (the offsets are zero-padded)
            model = key[len(DETECTORS_KEY):].rsplit("\x00", 1)[0]
            accepted = self.detectors[waiting.here].accept(model, waiting.pairs, restoring=True)
            self.stored_pairs[waiting.here].append((accepted, key))
        self.stale = False

    def _final_at(self, partial: dict[str, Any]) -> float:
        spec: WindowSpec = self.specs[partial["window"]["name"]]
        end = spec.end(partial["window"].get("start", 0))
        return final_at(end, self.config.join_ttl_s)

    def handle(self, table: Any, here: int, offset: int, value: bytes | None) -> list[Output]:
        """One message of merger partition ``here`` (any kind of ``kafka.messages``). One that cannot
        be handled (a bug, or a message mlmon did not write) is dead-lettered with the reason."""
        try:
            match decode(value or b"{}"):
                case Partial(partition=partition, partial=partial):
                    return self.on_partial(table, here, partition, partial)
                case Pairs(model=model, pairs=pairs):
                    return self.on_pairs(table, here, offset, model, pairs)
                case Ask(ask=model, home=home, ts=ts):
                    self.registry.on_ask(table, model, home, ts)
                    return []
                case Decided(decided=model, admitted=admitted):
                    return self.on_decided(table, here, model, admitted)
                case Forget(forget=model):
                    self.registry.on_forget(table, model)
                    if self.on_forget is not None:
                        self.on_forget(model)
                    return []
                case Heartbeat(watermarks=watermarks, idle=idle):
                    marks = {int(p): m for p, m in watermarks.items()}
                    return self.on_heartbeat(table, here, marks, set(idle))
            raise AssertionError("every kind of message is handled above")
        except Exception as exc:
            log.exception("merge failed on partition %s offset %s", here, offset)
            dead = {"source": "partials", "reason": f"the merge agent failed: {exc!r}"[:1024],
                    "raw": raw_text(value),
                    "topic": self.config.partials_topic, "partition": here, "offset": offset}
            return [(self.config.dead_letters_topic, None, orjson.dumps(dead))]

    def on_partial(self, table: Any, here: int, partition: int, partial: dict[str, Any]) -> list[Output]:
        """A partial from input ``partition`` arrived on merger partition ``here``: stored, and
        merged into a record at the heartbeat that follows it (once for all input partitions),
        under the names the limits allow (see registry); nothing of a refused model."""
        ts = max(self.event_time(here), float(partial["window"].get("start", 0)))  # heard, or the window's
        if self.registry.status(partial["model"], here, ts) is False:
            return self._refused(partial["model"], ts)
        partial, stands_for = self.registry.fold(table, partial, ts)
        key = record_key(partial)
        entry = self._entry(table, key)
        if entry is not None and is_final(entry):
            # A replay of a window already closed, or, when it changes what was published, records
            # of an input that was idle when the window closed: counted and logged, not merged.
            if partial.get("final") is False and partition in self.idle_partitions(here):
                self._late(partial, partition)
            return []
        table[key] = self.entries[key] = open_entry(entry, partial_slot(partition, stands_for), partial, here)
        self.open[here].setdefault(key, self._final_at(partial))
        self.changed[here].add(key)
        if self._in_base(partial):
            self.members[here][cumulative_key(partial)].add(key)
        return []

    def on_pairs(self, table: Any, here: int, offset: int, model: str, message: dict[str, Any]) -> list[Output]:
        """Pairs (and retractions) of a model's detector rules from one input partition: they wait,
        stored as they came, for the watermark of every input partition to pass them. Nothing of a
        model the registry refused (see registry)."""
        if self.registry.decided.get(model) is False:
            return []
        until = self.detectors[here].accept(model, message)
        key = pairs_key(model, offset)
        table[key] = stored(PairsEntry(here=here, pairs=message))
        self.stored_pairs[here].append((until, key))
        return []

    def _judge(self, table: Any, here: int, watermark: float) -> list[Output]:
        """The detectors of this merger partition's models judge the pairs before ``watermark``."""
        book = self.detectors.get(here)
        if book is None or not (book.waiting or self.stored_pairs[here]):
            return []
        models = {book.watched[number].model for number, _ in book.waiting}
        events = book.advance(watermark, time.time())
        for model in sorted(models):
            table[f"{DETECTORS_KEY}{model}"] = stored(DetectorsEntry(here=here, **book.export(model)))
        waiting = self.stored_pairs[here]  # messages whose pairs are all judged now (after the state that counts them)
        for _, key in [item for item in waiting if item[0] < watermark]:
            del table[key]
        waiting[:] = [item for item in waiting if item[0] >= watermark]
        if events and self.on_alerts is not None:
            self.on_alerts(events)
        return [(self.config.alerts_topic, e["fingerprint"].encode(), orjson.dumps(e)) for e in events]

    def detector_states(self) -> list[tuple[DetectorRule, Cusum]]:
        return [item for book in list(self.detectors.values()) for item in book.evaluated()]

    def event_time(self, here: int) -> float:
        """How far the furthest input partition has gone, as merger partition ``here`` heard."""
        return max(self.watermarks[here].values(), default=0.0)

    def _refused(self, model: str, ts: float) -> list[Output]:
        """A partial of a model the registry refused: counted, one dead letter an hour says why."""
        self.refused_partials += 1
        if not self._refusals.due(model, ts):
            return []
        dead = {"source": "partials", "model": model[:256],
                "reason": f"model '{model[:64]}' refused: the worker already monitors {self.config.max_models} "
                          "models, none idle for series_ttl (raise max_models); nothing of it is published, "
                          "and this is said once an hour (refused_partials counts them)"}
        return [(self.config.dead_letters_topic, None, orjson.dumps(dead))]

    def on_decided(self, table: Any, here: int, model: str, admitted: bool) -> list[Output]:
        """The registry's answer for a model of this home. Admitted: its held windows go out at
        once (the first alert of a new model waits for no heartbeat), but those the watermarks have
        passed, which close at the next heartbeat. Refused: they are dropped."""
        if not self.registry.on_decided(table, model, admitted):
            return []
        open_here = self.open[here]
        keys = [k for k in open_here if _model_of(k) == model]
        if admitted:
            low = self._low(here)
            now = {k for k in keys if low is None or open_here[k] > low}
            self.changed[here] |= set(keys) - now
            self.changed[here] -= now
            totals: set[str] = set()
            out = self._emit_open(table, now, totals)
            return out + [item for total in sorted(totals) for item in self._emit_cumulative(table, here, total)]
        for key in keys:
            del open_here[key]
            self.changed[here].discard(key)
            self.entries.pop(key, None)
            if key in table:
                del table[key]
        return self._refused(model, self.event_time(here))

    def on_heartbeat(self, table: Any, here: int, watermarks: dict[int, float | None],
                     idle: set[int] | None = None) -> list[Output]:
        """A worker's input partitions' watermarks (None: not known yet) after its partials, and
        which of them are idle: close every window of this merger partition that all input
        partitions but the idle ones have passed (when all are idle, the furthest one), then emit
        a record for each other window that changed."""
        known = self.watermarks[here]
        idle_here = self.idle[here]
        for partition, watermark in watermarks.items():
            if watermark is not None and watermark > known.get(partition, -math.inf):
                known[partition] = watermark
            idle_here[partition] = idle is not None and partition in idle
        out: list[Output] = []
        changed = self.changed.pop(here, set())
        totals: set[str] = set()  # cumulative windows whose base or open windows changed
        decided = self.registry.decided
        if self.registry.waiting:
            held = {key for key in changed if decided.get(_model_of(key)) is not True}
            changed -= held
            self.changed[here] |= held  # published once their model is admitted (see registry)
        low = self._low(here)
        if low is not None:
            out += self._judge(table, here, low - self.config.watermark_lag_s)  # as the engines' watermark
            open_here = self.open[here]
            for _, key in sorted((f, k) for k, f in open_here.items() if f <= low):
                entry = self._entry(table, key)
                if entry is not None and not is_final(entry) and decided.get(_model_of(key)) is not True:
                    continue  # final once its model is decided
                del open_here[key]
                changed.discard(key)
                if entry is None or is_final(entry):
                    continue
                partials = entry_partials(entry)
                if self._in_base(partials[0]):
                    total = cumulative_key(partials[0])
                    self._fold(table, total, partials)  # before the window is marked final: a crash between
                    self.members[here][total].discard(key)  # folds it again, and the fold sees it did
                    totals.add(total)
                out += self._emit(table, key, partials[0], partials[0]["window"], partials, final=True)
                table[key] = final_entry(here)
                self.entries.pop(key, None)
        out += self._emit_open(table, changed, totals)
        for total in sorted(totals):
            out += self._emit_cumulative(table, here, total)
        return out

    def _low(self, here: int) -> float | None:
        """The watermark that closes merger partition ``here``'s windows: the lowest of its input
        partitions' but the idle ones (when all are idle, the furthest); None until every input
        partition has been heard from."""
        known, idle_here = self.watermarks[here], self.idle[here]
        partitions = range(self.config.partitions)
        marks = [known[p] for p in partitions if p in known and not idle_here.get(p)]
        if not marks and known:  # every input idle: as far as any has gone
            marks = [max(known.values())]
        if marks and all(p in known or idle_here.get(p) for p in partitions):
            return min(marks)
        return None

    def _emit_open(self, table: Any, keys: set[str], totals: set[str]) -> list[Output]:
        """A record of each window of ``keys`` still open; the cumulative windows they are summed
        into are added to ``totals``."""
        out: list[Output] = []
        for key in sorted(keys):
            entry = self._entry(table, key)
            if entry is not None and not is_final(entry):
                partials = entry_partials(entry)
                out += self._emit(table, key, partials[0], partials[0]["window"], partials, final=False)
                if self._in_base(partials[0]):
                    totals.add(cumulative_key(partials[0]))
        return out

    def _entry(self, table: Any, key: str) -> dict[str, Any] | None:
        """A window's entry: as last written, or, for a window not open here, from the table."""
        entry = self.entries.get(key)
        return entry if entry is not None else table.get(key)

    def idle_partitions(self, here: int) -> set[int]:
        return {p for p, idle in self.idle[here].items() if idle}

    def _late(self, partial: dict[str, Any], partition: int) -> None:
        self.late_partials += 1
        now = time.monotonic()
        if now - self._late_logged >= 60:
            self._late_logged = now
            log.warning("input partition %d was idle when window %s of %s closed; its records for it came later "
                        "and are not in the final record (%d such partials so far; raise idle_timeout_s if "
                        "inputs pause for longer)", partition, partial["window"]["name"], partial["model"],
                        self.late_partials)

    def _in_base(self, partial: dict[str, Any]) -> bool:
        """Whether the partial's window is one a cumulative window is summed from."""
        return self.base is not None and partial["window"]["name"] == self.base.name

    def _fold(self, table: Any, total: str, partials: list[dict[str, Any]]) -> None:
        """Add a final base window to its cumulative window's stored base, once."""
        start = partials[0]["window"]["start"]
        base = self._base(table, total)
        if base is not None and start <= base.through:
            return  # folded already (base windows of a series close in start order)
        states = partials if base is None else [base.state, *partials]
        head = {k: partials[0][k] for k in ("model", "model_version", "segment")}
        table[CUMULATIVE_KEY + total] = stored(CumulativeBase(through=start, head=head,
                                                              state=merge_states(states).export()))

    @staticmethod
    def _base(table: Any, total: str) -> CumulativeBase | None:
        """The stored base of cumulative window ``total``, if any."""
        value = table.get(CUMULATIVE_KEY + total)
        return None if value is None else read_value(value, CumulativeBase)

    def _emit_cumulative(self, table: Any, here: int, total: str) -> list[Output]:
        """The cumulative record of a series: its stored base and every base window still open."""
        base = self._base(table, total)
        states = [] if base is None else [base.state]
        head = None if base is None else base.head
        for key in self.members[here].get(total, ()):
            entry = self._entry(table, key)
            if entry is not None and not is_final(entry):
                partials = entry_partials(entry)
                states += partials
                head = head or partials[0]
        if head is None:
            return []
        return self._emit(table, total, head, CUMULATIVE.describe(0), states, final=False)

    def _emit(self, table: Any, key: str, head: dict[str, Any], window: dict[str, Any],
              partials: list[dict[str, Any]], final: bool) -> list[Output]:
        """One metric record (and alert events) from the partials of a window; nothing for the hidden
        base of cumulative windows."""
        if self.hidden is not None and window["name"] == self.hidden.name:
            return []
        now = time.time()
        state = (rolling_state(partials, window["size_n"]) if window["kind"] == "rolling"
                 else merge_states(partials))
        record = metric_record(head["model"], head["model_version"], head["segment"], window, state, final,
                               rfc3339(now), self.book, self.config.sample)
        events = self.rules.evaluate(record, segment_label(head["segment"]), now)
        if self.on_record is not None:
            self.on_record(record)
        if events and self.on_alerts is not None:
            self.on_alerts(events)
        config = self.config
        out: list[Output] = [(config.metrics_topic, key.encode(), orjson.dumps(record))]
        out += [(config.alerts_topic, e["fingerprint"].encode(), orjson.dumps(e)) for e in events]
        if self.rules.rules:
            self._save_rules(table, head["model"])
        return out

    def _save_rules(self, table: Any, model: str) -> None:
        table[f"{RULES_KEY}{model}"] = [stored(RuleEntry(rule=rule, series=list(series), state=asdict(state)))
                                         for (rule, series), state in self.rules.states.items() if series[0] == model]
