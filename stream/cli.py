"""The ``mlmon`` command line."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import orjson

from stream.config import Config, bootstrap_servers
from stream.errors import MlmonError
from stream.simulate import Scenario

__all__ = ["build_parser", "main"]


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="YAML settings (windows, join_ttl, limits, rules)")
    parser.add_argument("--rules", type=Path, help="YAML file with a top-level 'rules' list")


def _kafka_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--broker", help="Kafka bootstrap servers, host:port,... or kafka://host:port "
                        "(default: the config's, 127.0.0.1:9092)")
    parser.add_argument("--config", type=Path, help="YAML settings (topics, partitions, kafka_options)")


def _replay(args: argparse.Namespace) -> int:
    from stream.replay import replay

    config = Config.load(args.config, args.rules)
    dead = args.dead_letters_out or default_dead_letters(args.metrics_out)
    result = replay(args.predictions, args.labels, config, args.metrics_out, args.alerts_out, dead,
                    format=args.format, final_only=not args.revisions, quiet=args.quiet, processes=args.processes)
    summary = result.summary()
    summary["dead_letters_file"] = str(dead)
    if args.report_out:
        from stream.report import read_files, write_report

        inputs = read_files([args.metrics_out], [args.alerts_out])
        inputs.health, inputs.dead_letters = summary["health"], summary["dead_letters"]
        summary["report_file"] = str(write_report(args.report_out, inputs, title="mlmon backtest"))
    sys.stdout.write(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


def default_dead_letters(metrics_out: Path) -> Path:
    """dead-letters.jsonl beside the metrics output when that is a regular file (or a new one),
    else in the working directory (``--metrics-out /dev/null`` must not write into /dev).

    >>> str(default_dead_letters(Path("/dev/null")))
    'dead-letters.jsonl'
    """
    if metrics_out.is_file() or (not metrics_out.exists() and metrics_out.parent.is_dir()):
        return metrics_out.parent / "dead-letters.jsonl"
    return Path("dead-letters.jsonl")


def _scenario_args(parser: argparse.ArgumentParser, degrade_from: float, recover_at: float,
                   label_delay_mean_s: float) -> None:
    """The simulated model's options, shared by `simulate` and `produce`."""
    parser.add_argument("--pairs", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--event-rate", type=float, default=100.0, help="predictions per second of event time")
    parser.add_argument("--start-ts", type=float, help="event time of the first prediction (epoch seconds)")
    parser.add_argument("--classes", type=int, default=2)
    parser.add_argument("--coverage", type=float, default=1.0, help="fraction of predictions that get a label")
    parser.add_argument("--duplicates", type=float, default=0.0, help="fraction of records sent twice")
    parser.add_argument("--early-labels", type=float, default=0.0, help="fraction of labels stamped early")
    parser.add_argument("--label-delay-mean-s", type=float, default=label_delay_mean_s)
    parser.add_argument("--accuracy", type=float, default=0.9)
    parser.add_argument("--degraded-accuracy", type=float, default=0.55)
    parser.add_argument("--degrade-from", type=float, default=degrade_from, help="where quality drops (fraction)")
    parser.add_argument("--recover-at", type=float, default=recover_at, help="fraction where it recovers")


def _scenario(args: argparse.Namespace, default_start_ts: float) -> Scenario:
    start_ts = default_start_ts if args.start_ts is None else args.start_ts
    return Scenario(
        pairs=args.pairs, seed=args.seed, start_ts=start_ts, rate_per_s=args.event_rate,
        classes=tuple(f"class_{i}" for i in range(args.classes)) if args.classes != 2 else ("home_win", "away_win"),
        label_coverage=args.coverage, duplicate_rate=args.duplicates, label_delay_mean_s=args.label_delay_mean_s,
        early_label_rate=args.early_labels, degrade_from=args.degrade_from, recover_at=args.recover_at,
        accuracy=args.accuracy, degraded_accuracy=args.degraded_accuracy,
    )


def _simulate(args: argparse.Namespace) -> int:
    from stream.simulate import streams

    predictions, labels = streams(_scenario(args, Scenario.start_ts))  # reproducible files by default
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in (("predictions.jsonl", predictions), ("labels.jsonl", labels)):
        with (args.out_dir / name).open("wb") as out:
            out.write(b"".join(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in rows))
    print(f"wrote {len(predictions)} predictions and {len(labels)} labels to {args.out_dir}")
    return 0


def _kafka_config(args: argparse.Namespace) -> Config:
    config = Config.load(args.config, getattr(args, "rules", None))
    if args.broker:
        config.broker = bootstrap_servers(args.broker)
    return config


def _produce(args: argparse.Namespace) -> int:
    from stream.kafka.admin import ensure_topics
    from stream.kafka.produce import file_records, produce, scenario_records

    config = _kafka_config(args)
    ensure_topics(config)
    if args.predictions or args.labels:
        records = file_records(args.predictions, args.labels)
    else:
        records = scenario_records(_scenario(args, time.time()))  # live traffic: stamped from now
    report = produce(config, records, rate_per_s=args.rate)
    print(orjson.dumps(vars(report)).decode())
    return 0 if report.failed == 0 else 1


def _tail(args: argparse.Namespace) -> int:
    from stream.kafka.tail import tail

    config = _kafka_config(args)
    topic = config.metrics_topic if args.command == "metrics" else config.alerts_topic
    tail(config, topic, as_json=args.json, follow=args.follow)
    return 0


def _worker(args: argparse.Namespace) -> int:
    from stream.kafka.worker import run_worker

    return run_worker(_kafka_config(args), loglevel=args.loglevel)


def _report(args: argparse.Namespace) -> int:
    from stream.report import read_files, read_topics, write_report

    if args.broker or args.config:
        if args.records or args.alerts:
            raise MlmonError("give either files (--records, --alerts) or a broker (--broker/--config), not both")
        inputs = read_topics(_kafka_config(args))
    elif not args.records:
        raise MlmonError("nothing to report: give --records (metric records, JSONL or Parquet) or --broker")
    else:
        inputs = read_files(args.records, args.alerts or [], args.health, args.dead_letters)
    for problem in inputs.problems:
        print(f"mlmon report: skipped {problem}", file=sys.stderr)
    if inputs.skipped > len(inputs.problems):
        print(f"mlmon report: skipped {inputs.skipped - len(inputs.problems)} more", file=sys.stderr)
    if not inputs.metrics:
        raise MlmonError("no metric records to report on")
    metrics = tuple(m.strip() for m in args.metrics.split(",") if m.strip()) if args.metrics else None
    path = write_report(args.out, inputs, metrics, title=args.title)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB): {len(inputs.metrics)} metric records, "
          f"{len(inputs.alerts)} alert events")
    return 0


def _rules_check(args: argparse.Namespace) -> int:
    from stream.report.rules_check import check_rules, format_check

    found = check_rules(args.predictions, args.labels, Config.load(args.config, args.rules), args.format)
    if args.json:
        sys.stdout.write(orjson.dumps(found, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(format_check(found))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from stream.demo import run_demo

    return run_demo(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlmon", description="Monitor production ML model quality.")
    commands = parser.add_subparsers(dest="command", required=True)

    rp = commands.add_parser("replay", help="backtest: feed predictions and labels (JSONL, CSV or Parquet) "
                             "through the core")
    rp.add_argument("--predictions", required=True, help="a file, a directory or a glob ('exports/*.parquet')")
    rp.add_argument("--labels", required=True, help="a file, a directory or a glob")
    rp.add_argument("--format", choices=["jsonl", "csv", "parquet"],
                    help="the inputs' format (default: by extension: .jsonl/.json/.ndjson, .csv, .parquet)")
    rp.add_argument("--metrics-out", type=Path, required=True, help="JSONL, or Parquet by the .parquet extension")
    rp.add_argument("--alerts-out", type=Path, required=True)
    rp.add_argument("--dead-letters-out", type=Path, help="default: dead-letters.jsonl beside --metrics-out when "
                    "that is a regular file, else in the working directory")
    rp.add_argument("--revisions", action="store_true",
                    help="every revision of a window as its pairs change (one per emit_interval of event time), "
                    "then its final record (default: the final record alone; rules still judge every emit_interval)")
    rp.add_argument("--final-only", action="store_true", help="the final record alone: the default")
    rp.add_argument("--quiet", action="store_true", help="no progress bar (shown on a terminal after 2 s)")
    rp.add_argument("--processes", type=int, choices=[1, 2], help="2: two processes, each replaying the requests "
                    "whose id hashes to its half, when the settings allow (files, no rules or detectors, final "
                    "records only), else a second process reads files in time order; 1: one process (default: "
                    "2 for 16 MiB of input or more, on two cores or more)")
    rp.add_argument("--report-out", type=Path, help="also write the HTML report of the backtest here "
                    "(as `mlmon report` makes from the outputs)")
    _config_args(rp)
    rp.set_defaults(run=_replay)

    sim = commands.add_parser("simulate", help="write a simulated model's predictions and labels as JSONL")
    sim.add_argument("--out-dir", type=Path, required=True)
    _scenario_args(sim, degrade_from=0.5, recover_at=0.75, label_delay_mean_s=600.0)
    sim.set_defaults(run=_simulate)

    prod = commands.add_parser("produce", help="send a simulated model's traffic (or JSONL files) to Kafka")
    _kafka_args(prod)
    prod.add_argument("--predictions", type=Path, help="JSONL file to send instead of the simulation")
    prod.add_argument("--labels", type=Path, help="JSONL file to send instead of the simulation")
    prod.add_argument("--rate", type=float, default=0.0, help="predictions per second of wall time (0: flat out)")
    _scenario_args(prod, degrade_from=1.0, recover_at=1.0, label_delay_mean_s=60.0)
    prod.set_defaults(run=_produce)

    worker = commands.add_parser("worker", help="run the faust worker: join, count, publish metrics and alerts")
    _kafka_args(worker)
    worker.add_argument("--rules", type=Path, help="YAML file with a top-level 'rules' list")
    worker.add_argument("--loglevel", default="info", choices=["debug", "info", "warning", "error"])
    worker.set_defaults(run=_worker)

    for name in ("metrics", "alerts"):
        group = commands.add_parser(name, help=f"read the {name} topic").add_subparsers(dest="action", required=True)
        tail_parser = group.add_parser("tail", help=f"print {name} records as they arrive")
        _kafka_args(tail_parser)
        tail_parser.add_argument("--json", action="store_true", help="one JSON object per line")
        tail_parser.add_argument("--follow", action="store_true", help="keep waiting for new records")
        tail_parser.set_defaults(run=_tail)

    rep = commands.add_parser("report", help="one HTML page (opens offline) of metric records and alert events: "
                              "from replay's files, or the worker's topics with --broker")
    rep.add_argument("--records", type=Path, nargs="+", help="metric records: JSONL or Parquet files")
    rep.add_argument("--alerts", type=Path, nargs="+", help="alert events: JSONL files")
    rep.add_argument("--health", type=Path, help="the summary `mlmon replay` printed (JSON): the join's health")
    rep.add_argument("--dead-letters", type=Path, help="dead letters (JSONL): counted in the summary")
    rep.add_argument("--metrics", help="the figures to plot over time, comma-separated (default: accuracy,f1_macro,"
                     "roc_auc; mae,rmse,r2 for regression models)")
    rep.add_argument("--title", default="mlmon report")
    rep.add_argument("--out", type=Path, required=True, help="the HTML file to write")
    _kafka_args(rep)
    rep.set_defaults(run=_report)

    rules = commands.add_parser("rules", help="alert rules").add_subparsers(dest="action", required=True)
    check = rules.add_parser("check", help="run a rules file over history: the alerts each rule would have "
                             "raised per series, and each detector's baseline, expected delay and promise")
    check.add_argument("--predictions", required=True, help="a file, a directory or a glob")
    check.add_argument("--labels", required=True, help="a file, a directory or a glob")
    check.add_argument("--rules", type=Path, required=True, help="YAML file with a top-level 'rules' list")
    check.add_argument("--config", type=Path, help="YAML settings (windows, join_ttl, ...)")
    check.add_argument("--format", choices=["jsonl", "csv", "parquet"],
                       help="the inputs' format (default: by extension)")
    check.add_argument("--json", action="store_true", help="the findings as JSON rather than a table")
    check.set_defaults(run=_rules_check)

    demo = commands.add_parser("demo", help="a simulated NBA model degrading and recovering, no broker needed")
    demo.add_argument("--pairs", type=int, default=20_000)
    demo.add_argument("--duration", type=float, default=20.0, help="seconds the demo runs")
    demo.add_argument("--metrics-port", type=int, default=9464, help="port of the Prometheus /metrics endpoint")
    demo.add_argument("--metrics-address", default="127.0.0.1", help="address to serve /metrics on")
    demo.add_argument("--alertmanager-url", help="also send alerts to this Alertmanager (v2 API)")
    demo.add_argument("--webhook-url", help="also POST every alert event here as JSON")
    demo.add_argument("--broker", help="run the demo over this Kafka broker (a worker process and a producer)")
    demo.add_argument("--report-out", type=Path, help="where to write the HTML report at the end "
                      "(default: report.html in a new temporary folder)")
    _config_args(demo)
    demo.set_defaults(run=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except MlmonError as exc:
        print(f"mlmon: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader went away (`mlmon ... | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
