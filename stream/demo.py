"""``mlmon demo``: a simulated NBA game-outcome model, replayed through the core in real time.

Labels arrive when games end (minutes to hours after the prediction). The model degrades
part-way and recovers, so the demo shows an alert firing and then resolving.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from stream.config import Config
from stream.core.engine import Engine
from stream.core.keys import segment_label
from stream.core.records import Label, Prediction, parse_label, parse_prediction
from stream.exporters.alerts import Delivery
from stream.exporters.prometheus import EngineCollector, for_engine, serve
from stream.report import Inputs, read_topics, write_report
from stream.report.charts import epoch_s
from stream.simulate import Scenario, arrivals

__all__ = ["BROKER_RULES", "DEMO_SETTINGS", "REPLAY_SHARE", "LiveView", "accuracy_chart", "demo_scenario",
           "run_broker_demo", "run_demo"]

CLOSING_MODEL = "end"  # of the far-future records that close the broker demo's last windows: not reported
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
    }, {  # no threshold: a fall of 0.1 from the accuracy it learns, at most one false alarm per million games
        "name": "AccuracyDrop",
        "metric": "accuracy",
        "detector": "cusum",
        "drop": 0.1,
        "baseline_pairs": 1000,
    }],
    "positive_classes": {"*": "home_win"},
    # Youden's J of home wins: how far the model beats a coin that says "home win" at any rate
    "custom_metrics": [{"name": "youden_j", "expression": "recall['home_win'] + recall['away_win'] - 1"}],
}


def demo_scenario(pairs: int) -> Scenario:
    return Scenario(pairs=pairs, rate_per_s=2.0, label_delay_mean_s=900.0, label_coverage=0.95,
                    degrade_from=0.35, recover_at=0.65, accuracy=0.88, degraded_accuracy=0.6)


def _line(record: dict[str, Any]) -> str:
    m = record["metrics"]
    coverage = record["label_coverage"]
    cov = f" coverage {coverage:6.1%}" if coverage is not None else ""
    figures = "  ".join(f"{name} {m[name] if m.get(name) is not None else float('nan'):.3f}"
                        for name in ("accuracy", "f1_macro", "roc_auc", "youden_j"))
    where = f"{record['model']} {record['model_version']} {record['window']['name']:<13}"
    return f"{where} n={record['n']:<6} {figures}{cov}"


def run_demo(args: argparse.Namespace) -> int:
    if args.broker:
        return run_broker_demo(args)
    config = Config.load(args.config, args.rules) if args.config or args.rules else Config.from_mapping(DEMO_SETTINGS)
    config.alertmanager_url = args.alertmanager_url or config.alertmanager_url
    config.webhook_url = args.webhook_url or config.webhook_url
    engine = Engine(config)
    delivery = Delivery(config.alertmanager_url or None, config.webhook_url or None).start()
    collector = for_engine(engine)
    try:
        port = serve(collector, args.metrics_port, args.metrics_address)
    except OSError as exc:  # the port is taken: a newcomer still gets a working demo
        port = serve(collector, 0, args.metrics_address)
        print(f"mlmon demo: port {args.metrics_port} is not free ({exc.strerror}); using {port}", flush=True)
    print(f"mlmon demo: Prometheus metrics at http://{args.metrics_address}:{port}/metrics", flush=True)
    events = arrivals(demo_scenario(args.pairs))
    n_predictions = sum(1 for _, kind, _ in events if kind == 0)
    first_ts = events[0][0]
    span = max(1.0, events[-1][0] - first_ts)
    replay_s = max(args.duration * REPLAY_SHARE, 0.1)  # then the final figures stay up until the end
    speed = span / replay_s
    started = time.monotonic()
    print(f"mlmon demo: {n_predictions} predictions, {len(events) - n_predictions} labels, replayed at {speed:.0f}x "
          f"over {args.duration:.0f} s")
    view = LiveView(collector)
    report_path = _report_path(args)
    if not view.tty:
        print(f"mlmon demo: the HTML report will be written to {report_path} at the end", flush=True)
    at = 0
    while at < len(events):  # the records whose time has come, a batch at a time
        wait = (events[at][0] - first_ts) / speed - (time.monotonic() - started)
        if wait > 0:
            time.sleep(wait)
        due = first_ts + (time.monotonic() - started) * speed
        batch: list[Prediction | Label] = []
        while at < len(events) and (not batch or events[at][0] <= due):
            _, kind, raw = events[at]
            batch.append(parse_prediction(raw) if kind == 0 else parse_label(raw))
            at += 1
        engine.receive_many(batch)
        delivery.submit(engine.alert_events)
        view.update(engine)
    engine.finish()
    delivery.submit(engine.alert_events)
    view.update(engine, final=True)
    print(f"join health: {engine.health.pairs} pairs, {engine.health.expired_predictions} expired predictions, "
          f"{engine.health.duplicate_predictions + engine.health.duplicate_labels} duplicates; balance "
          f"{engine.balance()}", flush=True)
    write_report(report_path, Inputs(metrics=view.records, alerts=view.alerts, health=engine.health.as_dict(),
                                     dead_letters=len(engine.dead_letters)),
                 title="mlmon demo: a simulated NBA game-outcome model")
    print(f"mlmon demo: report written to {report_path}", flush=True)
    # The final figures stay on /metrics until --duration is over, and for its last fifth at least
    # (on a busy machine the replay can overrun its share: scrapers still see the final state).
    time.sleep(max(args.duration * (1 - REPLAY_SHARE), args.duration - (time.monotonic() - started)))
    delivery.close()
    return 0


class LiveView:
    """The terminal view: alert lines scroll, a table of the newest figures redraws in place on a
    terminal (on a pipe, the table is printed once a second instead)."""

    def __init__(self, collector: EngineCollector) -> None:
        self.collector = collector
        self.tty = sys.stdout.isatty()
        self.records: list[dict[str, Any]] = []  # every record and alert event, for the report
        self.alerts: list[dict[str, Any]] = []
        self.latest: dict[tuple[str, str], dict[str, Any]] = {}
        self.drawn = 0  # lines of the table currently on screen
        self.last_draw = 0.0

    def update(self, engine: Engine, final: bool = False) -> None:
        self.collector.observe(engine.metric_records)
        self.records += engine.metric_records
        self.alerts += engine.alert_events
        for record in engine.metric_records:
            if record["n"] and record["window"]["kind"] in ("rolling", "cumulative"):
                segment = segment_label(record["segment"]) or "all games"
                self.latest[(record["window"]["name"], segment)] = record
        engine.metric_records.clear()
        if engine.alert_events:
            self._erase()
            for event in engine.alert_events:
                mark = "FIRING  " if event["status"] == "firing" else "RESOLVED"
                print(f"[{mark}] {event['alertname']} {event['labels']['model']}: {event['annotations']['summary']} "
                      f"(value {event['value']:.3f}, n={event['n']})", flush=True)
            engine.alert_events.clear()
        now = time.monotonic()
        if final or now - self.last_draw >= (0.25 if self.tty else 1.0):
            self._draw(engine, final)
            self.last_draw = now

    def _erase(self) -> None:
        if self.tty and self.drawn:
            sys.stdout.write(f"\x1b[{self.drawn}F\x1b[J")
            self.drawn = 0

    def _draw(self, engine: Engine, final: bool) -> None:
        if not self.latest:
            return
        self._erase()
        clock = time.strftime("%Y-%m-%d %H:%M", time.gmtime(engine.watermark)) if 0 < engine.watermark < 1e11 else "end"
        firing = ([rule.name for rule, state in engine.rules.evaluated() if state.firing]
                  + [rule.name for rule, cusum in engine.detectors.evaluated() if cusum.firing])
        lines = [f"{'final' if final else 'live'}  event time {clock}  alerts: {', '.join(firing) or 'none firing'}"]
        for (_, segment), record in sorted(self.latest.items()):
            lines.append(f"  {segment:<12} " + _line(record))
        if self.tty:
            lines = [*accuracy_chart(self.records, self.alerts), *lines]
        if self.tty or final:
            print("\n".join(lines), flush=True)
            self.drawn = len(lines) if self.tty and not final else 0
        else:
            print(lines[0] + "\n" + "\n".join(lines[1:]), flush=True)


def accuracy_chart(records: list[dict[str, Any]], alerts: list[dict[str, Any]], width: int = 100) -> list[str]:
    """Accuracy over event time of the smallest tumbling window, overall, with each alert's firing
    marked: the terminal's lines (plotext)."""
    import plotext as plt

    latest: dict[int, float] = {}
    size = min((r["window"]["size_s"] for r in records if r["window"]["kind"] == "tumbling"), default=None)
    for record in records:
        accuracy = record["metrics"].get("accuracy")
        if record["window"].get("size_s") == size and not record["segment"] and accuracy is not None:
            latest[record["window"]["start"]] = accuracy
    if size is None or len(latest) < 2:
        return []
    first = min(latest)
    plt.clear_figure()
    plt.plotsize(width, 14)
    plt.theme("clear")
    plt.plot([(t - first) / 3600 for t in sorted(latest)], [latest[t] for t in sorted(latest)], marker="braille")
    for event in alerts:
        if event["status"] == "firing":
            plt.vline((epoch_s(event["starts_at"]) - first) / 3600, "red")
    plt.ylim(0.4, 1.0)
    plt.title(f"accuracy per {size // 60}-minute window over event time (hours); red: an alert fired")
    return str(plt.build()).splitlines()


def _report_path(args: argparse.Namespace) -> Path:
    if getattr(args, "report_out", None):
        return Path(args.report_out)
    return Path(tempfile.mkdtemp(prefix="mlmon-demo-")) / "report.html"


BROKER_RULES = """
rules:
  - name: ModelAccuracyLow
    metric: accuracy
    window: tumbling_15m
    below: 0.75
    clear: 0.8
    min_samples: 200
    severity: warning
    summary: accuracy of the last 15 minutes of labeled games fell below 75%
"""


def run_broker_demo(args: argparse.Namespace) -> int:
    """The same simulated model over Kafka: a worker process, this process producing and tailing."""
    import subprocess
    import threading
    import uuid

    from stream.kafka.admin import ensure_topics
    from stream.kafka.produce import produce, scenario_records
    from stream.kafka.tail import format_alert, read

    run = uuid.uuid4().hex[:8]
    folder = Path(tempfile.mkdtemp(prefix="mlmon-demo-"))
    topics = {f"{t}_topic": f"mlmon-demo-{run}-{t}" for t in
              ("predictions", "labels", "metrics", "alerts", "dead_letters", "health", "partials", "repartition")}
    settings = {"broker": args.broker, "app_id": f"mlmon-demo-{run}", "data_dir": str(folder / "data"),
                "join_ttl": "6h", "windows": ["tumbling 15m", "tumbling 1h"], "metrics_port": args.metrics_port,
                **topics}
    (folder / "config.yaml").write_text("".join(f"{k}: {v}\n" for k, v in settings.items()).replace(
        "['tumbling 15m', 'tumbling 1h']", "[tumbling 15m, tumbling 1h]"))
    (folder / "rules.yaml").write_text(BROKER_RULES)
    config = Config.load(folder / "config.yaml", folder / "rules.yaml")
    ensure_topics(config)
    print(f"mlmon demo over Kafka at {args.broker}: worker metrics at "
          f"http://127.0.0.1:{args.metrics_port}/metrics", flush=True)
    with (folder / "worker.log").open("wb") as log_file:
        worker = subprocess.Popen([sys.executable, "-m", "stream.cli", "worker", "--config",
                                   str(folder / "config.yaml"), "--rules", str(folder / "rules.yaml")],
                                  stdout=log_file, stderr=subprocess.STDOUT)
    print(f"worker log: {folder / 'worker.log'}", flush=True)
    stop = threading.Event()

    def show_alerts() -> None:
        for _, event in read(config, config.alerts_topic, follow=True, stop=stop):
            print(format_alert(event), flush=True)

    tail = threading.Thread(target=show_alerts, daemon=True)
    tail.start()
    scenario = demo_scenario(args.pairs)
    records = list(scenario_records(scenario))
    end_ts = records[-1][0] + 100_000  # far-future records on every partition close the last windows
    records += [(end_ts, kind, {"request_id": f"end-{i}", "model": CLOSING_MODEL, "timestamp": end_ts,
                                "prediction": "x"} if kind == 0 else
                 {"request_id": f"end-{i}", "timestamp": end_ts, "label": "x"})
                for i in range(64) for kind in (0, 1)]
    started = time.monotonic()
    report = produce(config, records, rate_per_s=args.pairs / max(args.duration * REPLAY_SHARE, 0.1))
    print(f"sent {report.predictions} predictions and {report.labels} labels", flush=True)
    time.sleep(max(2.0, args.duration - (time.monotonic() - started)))
    stop.set()
    worker.terminate()
    worker.wait(timeout=60)
    report_path = _report_path(args)
    inputs = read_topics(config)
    inputs.metrics = [r for r in inputs.metrics if r["model"] != CLOSING_MODEL]
    write_report(report_path, inputs, title="mlmon demo over Kafka: a simulated NBA game-outcome model")
    print(f"mlmon demo: report written to {report_path}", flush=True)
    return 0 if report.failed == 0 else 1
