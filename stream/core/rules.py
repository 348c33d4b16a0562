"""Alert rules: thresholds with ``min_samples``, ``for``, hysteresis and a statistical gate.

A rule watches one metric of one window spec for every series (model, version, segment) its
globs select. Each metric record of the series' *current* window is one evaluation; the current
window is the newest one that has reached ``min_samples`` (older windows still revised by late
labels keep their records but no longer move the alert). A rule fires once when the condition
has held for ``for`` consecutive evaluations, and resolves once when the value is back past the
clear threshold: one firing and one resolved event per episode, never a repeat.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from datetime import UTC, datetime
from statistics import NormalDist
from typing import Any

from stream.core.errors import ConfigError
from stream.core.keys import fingerprint
from stream.core.metrics import PROPORTIONS, wilson_interval

__all__ = ["DEFAULT_RUNBOOK", "Rule", "RuleBook", "RuleState", "effective_n", "metric_value", "parse_globs",
           "parse_number", "rfc3339"]

DEFAULT_RUNBOOK = "https://github.com/mlmon/mlmon/blob/main/docs/runbook.md"


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Rule:
    name: str
    metric: str
    window: str
    comparison: str  # "below" or "above"
    threshold: float
    clear: float
    models: tuple[str, ...] = ("*",)
    segments: tuple[str, ...] = ("",)
    min_samples: int = 1
    for_evaluations: int = 1
    confidence: float | None = None
    severity: str = "warning"
    runbook_url: str = DEFAULT_RUNBOOK
    summary: str = ""
    description: str = ""

    def selects(self, model: str, segment_key: str, window: str) -> bool:
        return (
            window == self.window
            and any(fnmatch.fnmatchcase(model, pattern) for pattern in self.models)
            and any(fnmatch.fnmatchcase(segment_key, pattern) for pattern in self.segments)
        )

    def breached(self, value: float, n_effective: int) -> bool:
        """Past the threshold; with a gate, the whole confidence interval must be past it."""
        if self.confidence is not None and n_effective > 0 and 0.0 <= value <= 1.0:
            z = NormalDist().inv_cdf(0.5 + self.confidence / 2)
            low, high = wilson_interval(value, n_effective, z)
            value = high if self.comparison == "below" else low
        return value < self.threshold if self.comparison == "below" else value > self.threshold

    def cleared(self, value: float) -> bool:
        return value >= self.clear if self.comparison == "below" else value <= self.clear

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> Rule:
        if not isinstance(raw, dict):
            raise ConfigError(f"rule {raw!r} must be a mapping")
        name = raw.get("name")
        if not isinstance(name, str) or not name.isidentifier():
            raise ConfigError(f"rule name {name!r} must be a CamelCase identifier, e.g. ModelAccuracyLow")
        where = f"rule {name}"
        comparison = "below" if "below" in raw else "above" if "above" in raw else None
        if comparison is None:
            raise ConfigError(f"{where}: give 'below: X' or 'above: X'")
        threshold = parse_number(raw[comparison], f"{where}: {comparison}")
        clear = parse_number(raw.get("clear", threshold), f"{where}: clear")
        if (comparison == "below" and clear < threshold) or (comparison == "above" and clear > threshold):
            raise ConfigError(f"{where}: 'clear' must be on the healthy side of the threshold")
        confidence = raw.get("confidence")
        if confidence is not None and not (isinstance(confidence, float) and 0 < confidence < 1):
            raise ConfigError(f"{where}: 'confidence' must be a fraction such as 0.95")
        metric, window = raw.get("metric"), raw.get("window")
        if not isinstance(metric, str) or not isinstance(window, str):
            raise ConfigError(f"{where}: 'metric' and 'window' (e.g. accuracy, tumbling_1h) are required")
        return cls(
            name=name, metric=metric, window=window, comparison=comparison,
            threshold=threshold, clear=clear,
            models=parse_globs(raw.get("models", ["*"]), where),
            segments=parse_globs(raw.get("segments", [""]), where),
            min_samples=_count(raw.get("min_samples", 1), f"{where}: min_samples"),
            for_evaluations=_count(raw.get("for", 1), f"{where}: for"),
            confidence=confidence,
            severity=str(raw.get("severity", "warning")),
            runbook_url=str(raw.get("runbook_url", DEFAULT_RUNBOOK)),
            summary=str(raw.get("summary", "")),
            description=str(raw.get("description", "")),
        )


def parse_number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where} must be a number, got {value!r}")
    return float(value)


def _count(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where} must be a whole number >= 1, got {value!r}")
    return value


def parse_globs(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: selectors must be a list of globs")
    return tuple(value)


def metric_value(metrics: dict[str, Any], name: str) -> float | None:
    """A flat metric ('accuracy') or a per-class one ('recall.positive')."""
    if "." in name:
        family, cls = name.split(".", 1)
        value = metrics.get(family, {}).get(cls) if isinstance(metrics.get(family), dict) else None
    else:
        value = metrics.get(name)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def effective_n(metrics: dict[str, Any], name: str, n: int) -> int:
    """Trials behind a proportion, for the Wilson gate: support for per-class recall, else pairs."""
    if name.startswith("recall.") and isinstance(metrics.get("support"), dict):
        return int(metrics["support"].get(name.split(".", 1)[1], 0))
    return n if name in PROPORTIONS or name.split(".")[0] in {"precision", "recall", "f1"} else 0


@dataclass
class RuleState:
    firing: bool = False
    streak: int = 0
    window_start: int = -1
    starts_at: float = 0.0
    labels: dict[str, str] = field(default_factory=dict)


class RuleBook:
    """Every rule's state per series; turns metric records into alert events."""

    def __init__(self, rules: list[Rule]) -> None:
        self.rules = rules
        self.states: dict[tuple[str, tuple[Any, ...]], RuleState] = {}

    def evaluate(self, record: dict[str, Any], segment_key: str, now: float) -> list[dict[str, Any]]:
        window = record["window"]
        events = []
        for rule in self.rules:
            if not rule.selects(record["model"], segment_key, window["name"]):
                continue
            event = self._step(rule, record, segment_key, window.get("start", 0), now)
            if event is not None:
                events.append(event)
        return events

    def _step(
        self, rule: Rule, record: dict[str, Any], segment_key: str, start: int, now: float
    ) -> dict[str, Any] | None:
        series = (record["model"], record["model_version"], segment_key)
        state = self.states.get((rule.name, series))
        if state is None:
            state = self.states[(rule.name, series)] = RuleState(labels=_labels(rule, record))
        n = record["n"]
        if start < state.window_start or (start > state.window_start and n < rule.min_samples):
            return None  # an older window, or a newer one without enough pairs yet
        if start > state.window_start:
            state.window_start, state.streak = start, 0
        value = metric_value(record["metrics"], rule.metric)
        if value is None or n < rule.min_samples:
            return None
        if state.firing:
            if rule.cleared(value):
                state.firing, state.streak = False, 0
                return _event(rule, state, "resolved", value, n, now, record)
            return None
        if rule.breached(value, effective_n(record["metrics"], rule.metric, n)):
            state.streak += 1
            if state.streak >= rule.for_evaluations:
                state.firing, state.starts_at = True, now
                return _event(rule, state, "firing", value, n, now, record)
        else:
            state.streak = 0
        return None

    def evaluated(self) -> list[tuple[Rule, RuleState]]:
        """Every (rule, state) that has seen a record, firing or not."""
        by_name = {rule.name: rule for rule in self.rules}
        return [(by_name[name], state) for (name, _), state in list(self.states.items()) if name in by_name]


def _labels(rule: Rule, record: dict[str, Any]) -> dict[str, str]:
    labels = {
        "alertname": rule.name, "model": record["model"], "model_version": record["model_version"],
        "metric": rule.metric, "window": record["window"]["name"], "severity": rule.severity,
        "rule": rule.name,
    }
    labels.update({f"segment_{k}": v for k, v in record["segment"].items()})
    return labels


def _event(
    rule: Rule, state: RuleState, status: str, value: float, n: int, now: float, record: dict[str, Any]
) -> dict[str, Any]:
    labels = state.labels
    direction = "below" if rule.comparison == "below" else "above"
    where = f"{labels['model']} {labels['model_version']} ({labels['window']})"
    summary = rule.summary or f"{rule.metric} of {where} is {direction} {rule.threshold:g}"
    if status == "resolved":
        summary = f"{rule.metric} of {where} recovered to {value:.4g}"
    description = rule.description or (
        f"{rule.metric} = {value:.4g} over {_span(record['window'], n)}; threshold {direction} "
        f"{rule.threshold:g}, clears at {rule.clear:g}."
    )
    event: dict[str, Any] = {
        "alertname": rule.name,
        "status": status,
        "labels": dict(labels),
        "annotations": {"summary": summary, "description": description, "runbook_url": rule.runbook_url},
        "value": value,
        "threshold": rule.threshold,
        "n": n,
        "starts_at": rfc3339(state.starts_at),
        "fingerprint": fingerprint(labels),
        "window": record["window"],
    }
    if status == "resolved":
        event["ends_at"] = rfc3339(now)
    return event


def _span(window: dict[str, Any], n: int) -> str:
    """The pairs a figure is over, in words: a timed window by its start, a rolling window as the
    last pairs, a cumulative one as every pair since its series began.

    >>> _span({"kind": "rolling", "name": "rolling_500", "size_n": 500}, 500)
    'the last 500 labeled predictions'
    >>> _span({"kind": "cumulative", "name": "cumulative"}, 42)
    '42 labeled predictions since the series began'
    """
    if "start" in window:
        return f"{n} labeled predictions in the window starting {rfc3339(window['start'])}"
    if window.get("kind") == "rolling":
        return f"the last {n} labeled predictions"
    return f"{n} labeled predictions since the series began"
