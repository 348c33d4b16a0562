"""``mlmon demo``: a simulated NBA game-outcome model, replayed through the core in real time.

Labels arrive when games end (minutes to hours after the prediction). The model degrades
part-way and recovers, so the demo shows an alert firing and then resolving.
"""

from __future__ import annotations

import argparse
import heapq
import time
from typing import Any

from stream.config import Config
from stream.core.engine import Engine
from stream.core.records import parse_label, parse_prediction
from stream.exporters.alerts import Delivery
from stream.exporters.prometheus import EngineCollector, for_engine, serve
from stream.simulate import Scenario, streams

REPLAY_SHARE = 0.8  # of --duration spent replaying; the rest keeps the final state on /metrics

DEMO_SETTINGS: dict[str, Any] = {
    "join_ttl": "6h",
    "emit_interval": "1m",
    "windows": ["tumbling 15m", "rolling 500", "cumulative"],
    "rules": [{
        "name": "ModelAccuracyLow",
        "metric": "accuracy",
        "window": "rolling_500",
        "below": 0.75,
        "clear": 0.8,
        "min_samples": 200,
        "for": 2,
        "confidence": 0.95,
        "severity": "warning",
        "summary": "accuracy of the last 500 labeled games fell below 75%",
    }],
}


def demo_scenario(pairs: int) -> Scenario:
    return Scenario(pairs=pairs, rate_per_s=2.0, label_delay_mean_s=900.0, label_coverage=0.95,
                    degrade_from=0.35, recover_at=0.65, accuracy=0.88, degraded_accuracy=0.6)


def _line(record: dict[str, Any]) -> str:
    m = record["metrics"]
    coverage = record["label_coverage"]
    cov = f" coverage {coverage:6.1%}" if coverage is not None else ""
    return (f"{record['model']} {record['model_version']} {record['window']['name']:<13} n={record['n']:<6} "
            f"accuracy {m.get('accuracy', float('nan')):.3f}  f1_macro {m.get('f1_macro', float('nan')):.3f}{cov}")


def run_demo(args: argparse.Namespace) -> int:
    config = Config.load(args.config, args.rules) if args.config or args.rules else Config.from_mapping(DEMO_SETTINGS)
    config.alertmanager_url = args.alertmanager_url or config.alertmanager_url
    config.webhook_url = args.webhook_url or config.webhook_url
    engine = Engine(config)
    delivery = Delivery(config.alertmanager_url or None, config.webhook_url or None).start()
    collector = serve(for_engine(engine), args.metrics_port, args.metrics_address)
    print(f"mlmon demo: Prometheus metrics at http://{args.metrics_address}:{args.metrics_port}/metrics", flush=True)
    predictions, labels = streams(demo_scenario(args.pairs))
    events = heapq.merge(
        ((p["timestamp"], 0, i, p) for i, p in enumerate(predictions)),
        ((lab["timestamp"], 1, i, lab) for i, lab in enumerate(labels)),
    )
    first_ts = predictions[0]["timestamp"]
    span = max(1.0, labels[-1]["timestamp"] - first_ts if labels else 1.0)
    replay_s = max(args.duration * REPLAY_SHARE, 0.1)  # then the final figures stay up until the end
    speed = span / replay_s
    started = time.monotonic()
    print(f"mlmon demo: {len(predictions)} predictions, {len(labels)} labels, replayed at {speed:.0f}x "
          f"over {args.duration:.0f} s")
    last_status = 0.0
    for ts, kind, _, raw in events:
        wait = (ts - first_ts) / speed - (time.monotonic() - started)
        if wait > 0:
            time.sleep(wait)
        engine.observe(ts)
        if kind == 0:
            engine.prediction(parse_prediction(raw))
        else:
            engine.label(parse_label(raw))
        delivery.submit(engine.alert_events)
        last_status = _show(engine, collector, last_status)
    engine.finish()
    delivery.submit(engine.alert_events)
    _show(engine, collector, 0.0, final=True)
    print(f"join health: {engine.health.pairs} pairs, {engine.health.expired_predictions} expired predictions, "
          f"{engine.health.duplicate_predictions + engine.health.duplicate_labels} duplicates; balance "
          f"{engine.balance()}", flush=True)
    time.sleep(max(0.0, args.duration - (time.monotonic() - started)))
    delivery.close()
    return 0


def _show(engine: Engine, collector: EngineCollector, last_status: float, final: bool = False) -> float:
    for event in engine.alert_events:
        mark = "FIRING  " if event["status"] == "firing" else "RESOLVED"
        print(f"[{mark}] {event['alertname']} {event['labels']['model']}: {event['annotations']['summary']} "
              f"(value {event['value']:.3f}, n={event['n']})", flush=True)
    engine.alert_events.clear()
    records = engine.metric_records
    collector.observe(records)
    now = time.monotonic()
    if records and (final or now - last_status >= 1.0):
        for record in records:
            if not record["segment"] and record["window"]["kind"] in ("rolling", "cumulative") and record["n"]:
                print(("final   " if final else "        ") + _line(record), flush=True)
        last_status = now
    records.clear()
    return last_status
