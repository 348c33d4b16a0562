"""Replay against the standard library's JSON decoder on the same lines, and replay's memory on a
large unsorted input.

    python -m benchmarks.replay --pairs 300000 --repeat 3
    python -m benchmarks.replay --pairs 0 --large 50000000      # peak RSS of 50M unsorted records
    python -m benchmarks.replay --pairs 100000 --regression --windows "tumbling 1h,tumbling 1d,cumulative,rolling 1000"
    python -m benchmarks.replay --pairs 300000 --repeat 3 --detector   # one CUSUM rule over every series
    python -m benchmarks.replay --pairs 300000 --repeat 3 --duckdb     # against the SQL a user would write
    python -m benchmarks.replay --pairs 300000 --repeat 3 --sample 0.1  # a tenth of the requests counted

The data is what a team backtests: three models over three days, 85% of predictions labeled
(hours later), a third of the timestamps as RFC 3339 strings, both files shuffled. In turns,
``--repeat`` times: (1) ``json.loads`` of every line of both files; (2) ``mlmon replay`` of them
with the default configuration and output (each window's final record; two processes), and the
same with ``--processes 1`` (each replay in a fresh process, as the command runs, timed as it
times itself); (3) ``--revisions`` (a
revision per changed window per minute of event time); (4) the floor that the revisions' output
sets: ``orjson`` (the fastest JSON encoder for Python) encoding and writing the metric records of
(3) alone, already computed.
Reports pairs per second and each one's ratio to the decode rate (pairs / seconds to decode the
lines). ``--detector`` adds (5) replay with one CUSUM rule over every series (each model overall and
per segment value; in one process, as rules are), reported beside (2) in one process as
``detector_ratio``. ``--duckdb`` adds (6) the DuckDB
query of the same final figures on the same files, on every core (``benchmarks/duckdb_query.py``),
reported as ``replay_to_duckdb``, and checks mlmon's final records against it. ``--sample R`` adds
(7) replay with ``sample: R``, in pairs of the input per second, and its ratio to (2) as
``sampled_ratio``. ``--large N``
writes N shuffled records and replays them in a fresh process, reporting its peak RSS (VmHWM).
Never part of the test command.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import pickle
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from benchmarks import duckdb_query
from stream.config import Config
from stream.core.detectors import DetectorRule

START = 1_767_225_600.0
MODELS = ("fraud", "churn", "upsell")


def records(pairs: int, seed: int = 1, regression: bool = False, shuffle: bool = True
            ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Three models over three days; 85% labeled; a third of the timestamps as RFC 3339.
    ``regression``: the models predict a price instead of a class with scores; ``shuffle``: both
    files out of order (else in time order)."""
    rng = random.Random(seed)
    span_s = 3 * 86400
    predictions, labels = [], []
    for i in range(pairs):
        ts = START + span_s * i / pairs
        model = MODELS[i % 3]
        truth: Any = rng.random() < 0.3
        guess: Any = truth if rng.random() < 0.85 else not truth
        p = min(1.0, max(0.0, rng.gauss(0.7 if guess else 0.3, 0.15)))
        if regression:
            truth = rng.lognormvariate(3, 1)
            guess = truth * rng.uniform(0.8, 1.2)
        stamp: Any = ts if i % 3 else datetime.fromtimestamp(ts, UTC).isoformat()
        predictions.append({"request_id": f"req-{i}", "model": model, "model_version": "v1", "timestamp": stamp,
                            "prediction": guess if regression else "1" if guess else "0",
                            "segment": {"country": ("DE", "FR", "US")[i % 7 % 3]},
                            **({} if regression else {"scores": {"1": p, "0": 1 - p}})})
        if rng.random() < 0.85:
            label_ts = ts + rng.expovariate(1 / 7200)
            labels.append({"request_id": f"req-{i}", "timestamp": label_ts if i % 2 else
                           datetime.fromtimestamp(label_ts, UTC).isoformat(),
                           "label": truth if regression else "1" if truth else "0"})
    if shuffle:
        rng.shuffle(predictions)
        rng.shuffle(labels)
    else:
        labels.sort(key=lambda r: r["timestamp"] if type(r["timestamp"]) is float else
                    datetime.fromisoformat(r["timestamp"]).timestamp())
    return predictions, labels


def write(folder: Path, pairs: int, regression: bool = False, shuffle: bool = True) -> tuple[Path, Path, int]:
    predictions, labels = records(pairs, regression=regression, shuffle=shuffle)
    paths = folder / "p.jsonl", folder / "l.jsonl"
    for path, rows in zip(paths, (predictions, labels), strict=True):
        path.write_bytes(b"".join(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in rows))
    return paths[0], paths[1], len(labels)


def decode_seconds(paths: tuple[Path, Path]) -> float:
    started = time.perf_counter()
    for path in paths:
        with path.open("rb") as lines:
            for line in lines:
                json.loads(line)
    return time.perf_counter() - started


def write_seconds(metrics: Path, out: Path) -> tuple[float, int]:
    """Encode and write a replay's metric records again, decoded beforehand in slices (untimed):
    what the output alone costs, however its records were computed."""
    seconds, count = 0.0, 0
    with metrics.open("rb") as lines, out.open("wb") as f:
        while chunk := list(itertools.islice(lines, 20_000)):
            records = [orjson.loads(line) for line in chunk]
            started = time.perf_counter()
            f.write(b"".join(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in records))
            seconds += time.perf_counter() - started
            count += len(records)
        started = time.perf_counter()
        f.flush()
        seconds += time.perf_counter() - started
    out.unlink()
    return seconds, count


def with_detector(config: Config) -> Config:
    """The config with one CUSUM rule on accuracy (or a band for regression) over every series."""
    metric = "within.10" if config.regression_models else "accuracy"
    rule = DetectorRule.parse({"name": "AccuracyDrop", "metric": metric, "detector": "cusum", "drop": 0.05,
                               "models": ["*"], "segments": ["*"]})
    return dataclasses.replace(config, detectors=[rule])


FRESH = """
import pickle, sys
from stream.replay import replay
paths, config, folder, final_only, processes = pickle.loads(sys.stdin.buffer.read())
result = replay(paths[0], paths[1], config, folder / "m.jsonl", folder / "a.jsonl", folder / "d.jsonl",
                final_only=final_only, processes=processes)
print(result.seconds, result.engine.health.pairs)
"""


def replay_seconds(paths: tuple[Path, Path], config: Config, folder: Path, final_only: bool = True,
                   processes: int | None = None) -> tuple[float, int]:
    """A replay's own time (from opening its inputs to its last record written, as it reports it)
    and pairs, in a fresh process as ``mlmon replay`` runs: a process that replayed before (the
    revisions, say) holds a heap that slows a later replay in it by 5 to 15%."""
    out = subprocess.run([sys.executable, "-c", FRESH], input=pickle.dumps((paths, config, folder, final_only,
                                                                               processes)),
                         capture_output=True, check=True)
    seconds, pairs = out.stdout.split()[-2:]
    return float(seconds), int(pairs)


LARGE = """
import sys
from pathlib import Path
from benchmarks import duckdb_query
from stream.config import Config
def peak():
    return int(next(x for x in open("/proc/self/status") if x.startswith("VmHWM")).split()[1]) * 1024
folder = Path(sys.argv[1])
result = replay(folder / "p.jsonl", folder / "l.jsonl", Config(), folder / "m.jsonl", final_only=True, quiet=False)
import resource
child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # the other share's process, if any
print(peak(), child, result.seconds, result.engine.health.pairs)
"""


def large(n: int, folder: Path) -> dict[str, Any]:
    """At least N records (predictions and their labels) in shuffled files, written in slices of
    a million predictions, each three days after the one before; then a fresh process replays them
    with --final-only and reports its peak RSS."""
    written = 0
    with (folder / "p.jsonl").open("wb") as p_out, (folder / "l.jsonl").open("wb") as l_out:
        for index in itertools.count():
            if written >= n:
                break
            predictions, labels = records(min(1_000_000, math.ceil((n - written) / 1.8)), seed=index)
            for rows, out in ((predictions, p_out), (labels, l_out)):
                for row in rows:
                    row["request_id"] = f"{index}-{row['request_id']}"
                out.write(b"".join(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in _shifted(rows, index)))
            written += len(predictions) + len(labels)
    out = subprocess.run([sys.executable, "-c", LARGE, str(folder)], capture_output=True, text=True, check=True)
    peak, child, seconds, pairs = out.stdout.split()
    return {"records": written, "peak_rss_bytes": int(peak), "child_peak_rss_bytes": int(child),
            "seconds": round(float(seconds), 1), "pairs": int(pairs)}


def _shifted(rows: list[dict[str, Any]], index: int) -> Iterator[dict[str, Any]]:
    """Slice ``index`` of a long history: three days after the one before (in epoch seconds)."""
    shift = 3 * 86400 * index
    for row in rows:
        ts = row["timestamp"]
        row["timestamp"] = (ts + shift) if isinstance(ts, float) else datetime.fromtimestamp(
            datetime.fromisoformat(ts).timestamp() + shift, UTC).isoformat()
        yield row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=300_000, help="predictions (85%% get a label)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--large", type=int, default=0, help="also replay at least this many shuffled records "
                        "(predictions and labels): peak RSS")
    parser.add_argument("--regression", action="store_true", help="regression models (a price) instead of "
                        "classifiers with scores")
    parser.add_argument("--in-order", action="store_true", help="both files in time order (else shuffled)")
    parser.add_argument("--detector", action="store_true", help="also replay with one CUSUM detector rule over "
                        "every series: its ratio to replay without rules")
    parser.add_argument("--duckdb", action="store_true", help="also run the DuckDB query of the same final "
                        "figures, and check mlmon's against it")
    parser.add_argument("--sample", type=float, default=0.0, help="also replay with this sample rate "
                        "(sample: 0.1): input pairs per second, against replay of every request")
    parser.add_argument("--windows", default="", help="windows instead of the default, comma-separated "
                        "('tumbling 1h,cumulative,rolling 1000')")
    args = parser.parse_args()
    report: dict[str, Any] = {"pairs": args.pairs, "python": sys.version.split()[0]}
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        if args.pairs:
            p_path, l_path, labeled = write(folder, args.pairs, args.regression, shuffle=not args.in_order)
            paths = (p_path, l_path)
            config = Config.from_mapping({**({"windows": args.windows.split(",")} if args.windows else {}),
                                          **({"regression_models": ["*"]} if args.regression else {})})
            configs: dict[str, tuple[Config, bool, int | None]] = {  # default emit: 1m
                "replay": (config, True, None), "replay_one_process": (config, True, 1),
                "replay_revisions": (config, False, None),
                **({"replay_detector": (with_detector(config), True, None)} if args.detector else {}),
                **({"replay_sampled": (dataclasses.replace(config, sample=args.sample), True, None)}
                   if args.sample else {})}
            runs: dict[str, list[float]] = {"decode": [], **{k: [] for k in configs}, "write_records_alone": [],
                                            **({"duckdb": []} if args.duckdb else {})}
            for _ in range(args.repeat):  # in turns: the machine's drift reaches every figure alike
                runs["decode"].append(labeled / decode_seconds(paths))
                for key, (config, final_only, processes) in configs.items():
                    seconds, pairs = replay_seconds(paths, config, folder, final_only, processes)
                    if key == "replay":
                        every = pairs  # the pairs of every request, which a sampled replay reads too
                    runs[key].append((every if key == "replay_sampled" else pairs) / seconds)
                    if key == "replay" and args.duckdb:
                        seconds, rows = duckdb_query.seconds(*paths)
                        runs["duckdb"].append(pairs / seconds)
                        report["duckdb_check"] = duckdb_query.check(folder / "m.jsonl", rows)
                    if key == "replay_revisions":
                        seconds, report["metric_records"] = write_seconds(folder / "m.jsonl", folder / "w.jsonl")
                        runs["write_records_alone"].append(pairs / seconds)
            decode = statistics.median(runs["decode"])
            report["decode_pairs_per_s"] = {"median": round(decode), "runs": [round(r) for r in runs["decode"]]}
            for key in (*configs, "write_records_alone", *(["duckdb"] if args.duckdb else [])):
                median = statistics.median(runs[key])
                report[f"{key}_pairs_per_s"] = {"median": round(median), "runs": [round(r) for r in runs[key]],
                                                "ratio_to_decode": round(median / decode, 3)}
        if args.duckdb and args.pairs:
            report["replay_to_duckdb"] = round(report["replay_pairs_per_s"]["median"]
                                               / report["duckdb_pairs_per_s"]["median"], 3)
        if args.sample and args.pairs:
            report["sampled_ratio"] = round(report["replay_sampled_pairs_per_s"]["median"]
                                            / report["replay_pairs_per_s"]["median"], 3)
        if args.detector:
            report["detector_ratio"] = round(report["replay_detector_pairs_per_s"]["median"]  # both in one process
                                             / report["replay_one_process_pairs_per_s"]["median"], 3)
        if args.large:
            report["large"] = large(args.large, folder)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
