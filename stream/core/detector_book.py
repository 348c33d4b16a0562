"""Detector rules over a stream of pairs: each series' detectors, the order their pairs are judged
in, and the exchange that lets the Kafka worker judge them as replay does (the detector itself:
:mod:`stream.core.detectors`).

A pair waits until the watermark passes its completion time; then the waiting pairs are judged in
completion order, ties by request id. A pair that completes behind the point already judged (its
records came after the watermark passed it) is not judged, only counted (``late_pairs``). So what
each detector sees is a function of the records, whatever their arrival order, batching or
partitioning, for records that come before the watermark passes them.

A pair is known by its detector (rule and series) and request id: a pair that is revised (an
earlier-stamped duplicate won) leaves before it is judged, and its successor takes its place.

The Kafka worker splits the book in two. Each join partition's engine only collects
(``collect=True``): ``take`` drains its pairs, and the retractions of pairs it sent already, into
messages for the merger of their model, whose book ``accept``s them from every partition and
judges at the watermark every partition has passed. A pair sent again (after a restart) replaces
itself; one that comes after its point was judged is late, as in replay.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from stream.core.detectors import Cusum, DetectorRule, alert_event
from stream.core.keys import segment_label

__all__ = ["PAIRS_PER_MESSAGE", "DetectorBook", "Watched"]

PAIRS_PER_MESSAGE = 4096  # pairs and retractions in one message to the merger (a Kafka message stays small)

SeriesKey = tuple[str, str, str, str]  # rule, model, version, segment key


@dataclass
class Watched:
    """A detector: one rule on one series."""

    rule: DetectorRule
    model: str
    version: str
    segment: dict[str, str]
    state: Cusum


class DetectorBook:
    """Every detector's state and its waiting pairs: pairs in, alert events out."""

    def __init__(self, rules: list[DetectorRule], collect: bool = False) -> None:
        self.rules = rules
        self.by_name = {rule.name: rule for rule in rules}
        self.collect = collect  # a worker's join partition: pairs go to the merger (``take``), never judged here
        self.watched: list[Watched] = []
        self.numbers: dict[SeriesKey, int] = {}
        self.waiting: dict[tuple[int, str], tuple[float, bool]] = {}  # (detector, request id) -> (done_ts, miss)
        self.retracted: list[tuple[int, str, float]] = []  # pairs taken back after ``take`` sent them
        self.judged_to = -math.inf
        self.late_pairs = 0

    def _number(self, rule: DetectorRule, model: str, version: str, segment: dict[str, str], segment_key: str) -> int:
        key = (rule.name, model, version, segment_key)
        number = self.numbers.get(key)
        if number is None:
            labels = {"alertname": rule.name, "model": model, "model_version": version, "metric": rule.metric,
                      "window": "pairs", "severity": rule.severity, "rule": rule.name,
                      **{f"segment_{k}": v for k, v in segment.items()}}
            number = self.numbers[key] = len(self.watched)
            self.watched.append(Watched(rule, model, version, dict(segment), Cusum(labels)))
        return number

    def watch(self, model: str, version: str, segment: dict[str, str], segment_key: str,
              regression: bool) -> list[tuple[DetectorRule, int]]:
        """The detectors of a new series, (rule, number): what ``push`` is given for its pairs."""
        return [(rule, self._number(rule, model, version, segment, segment_key)) for rule in self.rules
                if rule.selects(model, segment_key) and (rule.kind == "within") == regression]

    def push(self, done_ts: float, request_id: str, watchers: list[tuple[DetectorRule, int]], truth: Any,
             guess: Any, names: list[str] | None) -> None:
        """A pair of a series (its ``watchers``): classes as ids into ``names``, or regression numbers."""
        if done_ts < self.judged_to:
            self.late_pairs += len(watchers)
            return
        waiting = self.waiting
        for rule, number in watchers:
            kind = rule.kind
            if kind == "accuracy":
                miss = truth != guess
            elif kind == "within":
                miss = not abs(guess - truth) <= rule.tolerance
            else:
                assert names is not None
                on, other = (truth, guess) if kind == "recall" else (guess, truth)
                if names[on] != rule.argument:
                    continue  # not a pair this proportion counts
                miss = names[other] != rule.argument
            waiting[(number, request_id)] = (done_ts, miss)

    def remove(self, done_ts: float, request_id: str, watchers: list[tuple[DetectorRule, int]]) -> None:
        """A pair taken back (revised) before it was judged; one judged already stays judged."""
        for _, number in watchers:
            if self.waiting.pop((number, request_id), None) is None and self.collect:
                self.retracted.append((number, request_id, done_ts))

    def advance(self, watermark: float, now: float) -> list[dict[str, Any]]:
        """Judge the pairs that completed before ``watermark``, in completion order; their alerts."""
        if watermark <= self.judged_to or self.collect:
            return []
        self.judged_to = watermark
        waiting = self.waiting
        ready = [(done_ts, rid, number, miss) for (number, rid), (done_ts, miss) in waiting.items()
                 if done_ts < watermark]
        if not ready:
            return []
        for _, rid, number, _ in ready:
            del waiting[(number, rid)]
        ready.sort()
        events = []
        watched = self.watched
        for _, _, number, miss in ready:
            detector = watched[number]
            state = detector.state
            status = state.step(detector.rule, miss)
            if status is not None:
                if status == "firing":
                    state.starts_at = now
                events.append(alert_event(detector.rule, state, status, now))
        return events

    def evaluated(self) -> list[tuple[DetectorRule, Cusum]]:
        return [(w.rule, w.state) for w in self.watched]

    # ------------------------------------------------------- the worker's exchange

    def take(self) -> list[tuple[str, dict[str, Any]]]:
        """What a collecting book sends its models' mergers since the last call: (model, message),
        each message at most ``PAIRS_PER_MESSAGE`` entries, ``{"series": [[rule, version,
        segment]...], "retract": [[series, request id, done_ts]...], "pairs": [[series, request
        id, done_ts, miss]...]}`` (its retractions come before its pairs, as they were made)."""
        entries: dict[str, list[tuple[int, list[Any]]]] = {}
        for number, rid, done_ts in self.retracted:
            entries.setdefault(self.watched[number].model, []).append((number, [rid, done_ts]))
        for (number, rid), (done_ts, miss) in self.waiting.items():
            entries.setdefault(self.watched[number].model, []).append((number, [rid, done_ts, miss]))
        self.retracted = []
        self.waiting = {}
        out = []
        for model, items in entries.items():
            for start in range(0, len(items), PAIRS_PER_MESSAGE):
                local: dict[int, int] = {}
                message: dict[str, Any] = {"series": [], "retract": [], "pairs": []}
                for number, entry in items[start:start + PAIRS_PER_MESSAGE]:
                    if number not in local:
                        local[number] = len(local)
                        w = self.watched[number]
                        message["series"].append([w.rule.name, w.version, w.segment])
                    message["retract" if len(entry) == 2 else "pairs"].append([local[number], *entry])
                out.append((model, message))
        return out

    def accept(self, model: str, message: dict[str, Any], restoring: bool = False) -> float:
        """A message ``take`` made on a join partition: its retractions, then its pairs; returns
        the latest completion time in it (it matters until the watermark passes that)."""
        numbers = [None if (rule := self.by_name.get(name)) is None  # a rule since removed
                   else self._number(rule, model, version, segment, segment_label(segment))
                   for name, version, segment in message["series"]]
        until = -math.inf
        for i, rid, done_ts in message["retract"]:
            until = max(until, done_ts)
            if numbers[i] is not None:
                self.waiting.pop((numbers[i], rid), None)
        for i, rid, done_ts, miss in message["pairs"]:
            until = max(until, done_ts)
            if numbers[i] is None:
                continue
            if done_ts < self.judged_to:
                self.late_pairs += not restoring  # came after its point was judged
            else:
                self.waiting[(numbers[i], rid)] = (done_ts, bool(miss))
        return until

    def export(self, model: str) -> dict[str, Any]:
        """A model's detectors, as JSON (the merger's table; its waiting pairs are stored as they came)."""
        return {"judged_to": self.judged_to if math.isfinite(self.judged_to) else None,
                "detectors": [[w.rule.name, w.version, w.segment, asdict(w.state)]
                              for w in self.watched if w.model == model]}

    def restore(self, model: str, saved: dict[str, Any]) -> None:
        """What ``export`` gave, back (a merger's rebuild; then ``accept`` the stored messages again)."""
        for name, version, segment, state in saved["detectors"]:
            rule = self.by_name.get(name)
            if rule is not None:
                self.watched[self._number(rule, model, version, segment, segment_label(segment))].state = Cusum(**state)
        if saved["judged_to"] is not None:
            self.judged_to = max(self.judged_to, saved["judged_to"])
