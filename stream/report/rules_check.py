"""``mlmon rules check``: run a rules file over history and say what each rule would have done.

Per rule and series: the alerts it would have raised (firing and resolved, with the times they
would have had live), and for a detector rule the baseline it learned, the pairs behind it, the
in-control rate its design allows for, the expected delay for its ``drop`` next to Lorden's
limit, and the false-alarm rate it promises. This is how a user tunes ``drop`` and
``false_alarm_pairs`` (or a threshold) before going live.
"""

from __future__ import annotations

import math
from typing import Any

from stream.config import Config
from stream.core.detectors import delay_limit_pairs, expected_delay_pairs
from stream.core.engine import Engine
from stream.replay import Collected, run

__all__ = ["SHOWN_ALERTS", "check_rules", "format_check"]

SHOWN_ALERTS = 6  # alert events a series shows in the table


def check_rules(predictions: Any, labels: Any, config: Config, format: str | None = None) -> dict[str, Any]:
    """Replay the inputs with ``config``'s rules; what each rule would have raised, per series."""
    engine, sink, _, _ = run(predictions, labels, config, Collected, format=format)
    assert isinstance(sink, Collected)
    series: dict[tuple[str, tuple[str, ...]], dict[str, Any]] = {}
    for event in sink.alerts:
        labels_ = event["labels"]
        key = (event["alertname"], _series_key(labels_))
        entry = series.setdefault(key, _entry(labels_))
        entry["alerts"].append({k: event[k] for k in ("status", "starts_at", "ends_at", "value") if k in event})
    for rule, state in engine.rules.evaluated():
        series.setdefault((rule.name, _series_key(state.labels)), _entry(state.labels))["firing"] = state.firing
    for detector_rule, cusum in engine.detectors.evaluated():
        entry = series.setdefault((detector_rule.name, _series_key(cusum.labels)), _entry(cusum.labels))
        entry["firing"] = cusum.firing
        d = cusum.current()
        learned = cusum.baseline_n and 1 - cusum.baseline_misses / cusum.baseline_n
        entry["detector"] = {
            "baseline": None if d is None else 1 - d.p0,
            "learned_from_pairs": cusum.baseline_n if detector_rule.baseline is None else None,
            "learned": learned if detector_rule.baseline is None and cusum.baseline_n else None,
            "designed_for": None if d is None else 1 - d.p0_design,
            "expected_delay_pairs": None if d is None else _round(expected_delay_pairs(d, detector_rule.drop)),
            "delay_limit_pairs": None if d is None else _round(delay_limit_pairs(1 - d.p0, detector_rule.drop,
                                                                                  detector_rule.false_alarm_pairs)),
            "false_alarm_pairs": detector_rule.false_alarm_pairs,
            "state": "learning" if d is None else "firing" if cusum.firing else "watching",
        }
    return {
        "pairs": engine.health.pairs,
        "rules": [{"rule": name, **entry} for (name, _), entry in sorted(series.items())],
        "alert_events": len(sink.alerts),
        "late_pairs": engine.detectors.late_pairs,
        "note": _note(engine),
    }


def _series_key(labels: dict[str, str]) -> tuple[str, ...]:
    return (labels["model"], labels["model_version"], labels.get("window", ""),
            *sorted(f"{k}={v}" for k, v in labels.items() if k.startswith("segment_")))


def _entry(labels: dict[str, str]) -> dict[str, Any]:
    return {"model": labels["model"], "model_version": labels["model_version"], "window": labels.get("window"),
            "segment": {k[len("segment_"):]: v for k, v in labels.items() if k.startswith("segment_")},
            "firing": False, "alerts": []}


def _round(x: float) -> float | None:
    return None if not math.isfinite(x) else round(x, 1)


def _note(engine: Engine) -> str:
    if not engine.config.rules and not engine.config.detectors:
        return "no rules: give a rules file with --rules"
    return ("expected_delay_pairs: Wald's approximation of a detector's mean delay after a fall of exactly its "
            "drop (labeled pairs of that series); delay_limit_pairs: the least any detector with that false-alarm "
            "rate can have; false_alarm_pairs: at most one false alarm per this many pairs in control, promised")


def format_check(found: dict[str, Any]) -> str:
    """The check as a table a person reads."""
    lines = [f"{found['pairs']:,} pairs replayed; {found['alert_events']} alert events"]
    for item in found["rules"]:
        segment = ",".join(f"{k}={v}" for k, v in item["segment"].items()) or "(all)"
        head = f"{item['rule']:<20} {item['model']} {item['model_version']} {segment} [{item['window']}]"
        lines.append(head + ("  FIRING" if item["firing"] else ""))
        detector = item.get("detector")
        if detector is not None:
            if detector["baseline"] is None:
                lines.append(f"    learning: {detector['learned_from_pairs']} pairs so far")
            else:
                lines.append(
                    f"    baseline {detector['baseline']:.4f}"
                    + (f" (learned from {detector['learned_from_pairs']:,} pairs)"
                       if detector["learned_from_pairs"] is not None else " (given)")
                    + f"; expected delay {detector['expected_delay_pairs']} pairs"
                    f" (limit {detector['delay_limit_pairs']}); at most one false alarm per "
                    f"{detector['false_alarm_pairs']:,.0f} pairs")
        for alert in item["alerts"][:SHOWN_ALERTS]:
            until = f" until {alert['ends_at']}" if "ends_at" in alert else ""
            lines.append(f"    {alert['status']:<8} {alert['starts_at']}{until}  value {alert['value']:.4g}")
        if len(item["alerts"]) > SHOWN_ALERTS:
            lines.append(f"    ... {len(item['alerts']) - SHOWN_ALERTS} more alert events (--json lists them all)")
    lines.append(found["note"])
    return "\n".join(lines)
