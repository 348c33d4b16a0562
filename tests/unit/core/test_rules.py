"""Alert rules on hand-built sequences: firing, resolving, `for`, hysteresis, the statistical gate."""

from __future__ import annotations

from typing import Any

import pytest

from stream.core.rules import Rule, RuleBook, fingerprint
from stream.errors import ConfigError

BASE = {"name": "AccuracyLow", "metric": "accuracy", "window": "tumbling_1h", "below": 0.8}


def record(accuracy: float, n: int = 100, start: int = 0, model: str = "m") -> dict[str, Any]:
    return {"model": model, "model_version": "v1", "segment": {}, "n": n,
            "window": {"kind": "tumbling", "name": "tumbling_1h", "start": start, "end": start + 3600},
            "metrics": {"accuracy": accuracy, "support": {"a": n}}}


def run(rule: dict[str, Any], values: list[float | tuple[float, int] | tuple[float, int, int]]) -> list[str]:
    """Statuses emitted, one letter per evaluation: F firing, R resolved, . nothing."""
    book = RuleBook([Rule.parse({**BASE, **rule})])
    out = []
    for i, v in enumerate(values):
        acc, n, start = (v, 100, 0) if not isinstance(v, tuple) else (v[0], v[1], v[2] if len(v) > 2 else 0)
        events = book.evaluate(record(acc, n, start), "", now=1000.0 + i)
        out.append("".join(e["status"][0].upper() for e in events) or ".")
    return out


def test_fires_once_and_resolves_once() -> None:
    assert run({}, [0.9, 0.7, 0.6, 0.7, 0.9, 0.95, 0.7]) == [".", "F", ".", ".", "R", ".", "F"]


def test_for_needs_consecutive_breaches() -> None:
    assert run({"for": 3}, [0.7, 0.7, 0.9, 0.7, 0.7, 0.7, 0.7]) == [".", ".", ".", ".", ".", "F", "."]


def test_hysteresis_holds_between_threshold_and_clear() -> None:
    assert run({"clear": 0.85}, [0.79, 0.81, 0.79, 0.84, 0.86, 0.81]) == ["F", ".", ".", ".", "R", "."]


def test_min_samples_skips_small_windows() -> None:
    assert run({"min_samples": 50}, [(0.1, 10), (0.1, 49), (0.1, 50)]) == [".", ".", "F"]


def test_statistical_gate_waits_for_confidence() -> None:
    # 0.75 over 30 pairs: the Wilson interval still reaches 0.8; over 1000 pairs it does not.
    assert run({"confidence": 0.95}, [(0.75, 30), (0.75, 1000)]) == [".", "F"]
    assert run({}, [(0.75, 30)]) == ["F"]


def test_older_windows_no_longer_move_the_alert() -> None:
    # window 0 breaches, window 3600 becomes current and is healthy: resolve; a late revision
    # of window 0 does not fire again.
    values: list[Any] = [(0.5, 100, 0), (0.9, 100, 3600), (0.4, 100, 0)]
    assert run({}, values) == ["F", "R", "."]


def test_a_new_window_without_enough_pairs_keeps_the_old_one_current() -> None:
    values: list[Any] = [(0.5, 100, 0), (0.95, 5, 3600), (0.9, 100, 0)]
    assert run({"min_samples": 50}, values) == ["F", ".", "R"]


def test_above_rules_for_error_metrics() -> None:
    book = RuleBook([Rule.parse({"name": "LogLossHigh", "metric": "log_loss", "window": "tumbling_1h",
                                 "above": 0.5, "clear": 0.4})])
    rec = record(0.9)
    rec["metrics"]["log_loss"] = 0.6
    assert [e["status"] for e in book.evaluate(rec, "", 0.0)] == ["firing"]
    rec["metrics"]["log_loss"] = 0.45
    assert book.evaluate(rec, "", 1.0) == []
    rec["metrics"]["log_loss"] = 0.3
    assert [e["status"] for e in book.evaluate(rec, "", 2.0)] == ["resolved"]


def test_event_shape_and_stable_fingerprint() -> None:
    book = RuleBook([Rule.parse({**BASE, "severity": "critical", "runbook_url": "https://x/runbook"})])
    (fired,) = book.evaluate(record(0.5), "", 100.0)
    (resolved,) = book.evaluate(record(0.9), "", 200.0)
    assert fired["labels"] == {"alertname": "AccuracyLow", "model": "m", "model_version": "v1",
                               "metric": "accuracy", "window": "tumbling_1h", "severity": "critical",
                               "rule": "AccuracyLow"}
    assert fired["fingerprint"] == resolved["fingerprint"] == fingerprint(fired["labels"])
    assert fired["starts_at"] == resolved["starts_at"] == "1970-01-01T00:01:40Z"
    assert resolved["ends_at"] == "1970-01-01T00:03:20Z" and "ends_at" not in fired
    assert set(fired["annotations"]) == {"summary", "description", "runbook_url"}


def test_selectors_pick_models_and_per_class_metrics() -> None:
    book = RuleBook([Rule.parse({**BASE, "models": ["fraud-*"], "metric": "recall.a", "below": 0.5})])
    rec = record(0.9, model="churn")
    rec["metrics"]["recall"] = {"a": 0.1}
    assert book.evaluate(rec, "", 0.0) == []
    rec["model"] = "fraud-eu"
    assert [e["labels"]["metric"] for e in book.evaluate(rec, "", 0.0)] == ["recall.a"]


@pytest.mark.parametrize("bad", [
    {"name": "bad name", "metric": "accuracy", "window": "w", "below": 1},
    {"name": "X", "metric": "accuracy", "window": "w"},
    {"name": "X", "metric": "accuracy", "window": "w", "below": 0.8, "clear": 0.7},
    {"name": "X", "metric": "accuracy", "window": "w", "below": 0.8, "for": 0},
    {"name": "X", "metric": "accuracy", "window": "w", "below": 0.8, "confidence": 95},
])
def test_bad_rules_are_config_errors(bad: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        Rule.parse(bad)
