"""Core throughput and memory: pairs per second through the engine, bytes per pending request.

    python -m benchmarks.core --pairs 1000000 [--repeat 3] [--replay]

Measures, on one core: (1) the engine alone on parsed records, with scores (two classes) and
without, in batches (``receive_many``), and with scores one by one (``receive``); and given the
whole input as columns, with final records only (as replay's shares give it); against
``orjson.loads`` decoding the same records as JSON lines, in turns; what scores cost a pair (log
loss, Brier, and the histograms of ROC AUC, average precision and calibration); (2) with
--replay, `mlmon replay` from JSONL files (decode + validation + engine), with scores; and the
memory held per pending prediction.
Prints a JSON report; medians over --repeat runs.
"""

from __future__ import annotations

import argparse
import gc
import heapq
import json
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from stream.config import Config
from stream.core.columns import LabelColumns, PredictionColumns
from stream.core.engine import Engine
from stream.core.records import parse_label, parse_prediction
from stream.replay import replay
from stream.replay.bulk import interleaved
from stream.simulate import Scenario, streams


def scenario(pairs: int, label_delay_mean_s: float, with_scores: bool = True) -> Scenario:
    """At 100 pairs/s, a mean delay of 300 s keeps about 30,000 requests waiting for their label."""
    return Scenario(pairs=pairs, rate_per_s=100.0, label_delay_mean_s=label_delay_mean_s, duplicate_rate=0.0,
                    with_scores=with_scores)


def raw_events(pairs: int, label_delay_mean_s: float = 300.0,
               with_scores: bool = True) -> list[tuple[float, int, int, dict[str, object]]]:
    predictions, labels = streams(scenario(pairs, label_delay_mean_s, with_scores))
    return list(heapq.merge(
        ((p["timestamp"], 0, i, p) for i, p in enumerate(predictions)),
        ((x["timestamp"], 1, i, x) for i, x in enumerate(labels)),
    ))


def engine_run(events: list[tuple[float, int, int, dict[str, object]]], config: Config, chunk: int = 10_000,
               batched: bool = True) -> float:
    """Pairs per second of the engine alone. Records are parsed chunk by chunk, untimed, just
    before the engine sees them, as a streaming adapter hands over freshly decoded records: a
    chunk at a time (``receive_many``), or, ``batched`` off, one by one (``receive``)."""
    engine = Engine(config)
    gc.collect()
    elapsed = 0.0
    for offset in range(0, len(events), chunk):
        batch = [parse_prediction(raw) if kind == 0 else parse_label(raw)
                 for _, kind, _, raw in events[offset:offset + chunk]]
        started = time.perf_counter()
        if batched:
            engine.receive_many(batch)
        else:
            for record in batch:
                engine.receive(record)
        engine.metric_records.clear()
        elapsed += time.perf_counter() - started
    started = time.perf_counter()
    engine.finish()
    elapsed += time.perf_counter() - started
    assert engine.balance() == {"predictions": 0, "labels": 0}
    return engine.health.pairs / elapsed


def columns_run(events: list[tuple[float, int, int, dict[str, object]]], config: Config) -> float:
    """Pairs per second of the engine given the whole input as columns, writing final records only
    (as replay's shares give it: ``Engine.take_settled``, then the other records in time order
    between the settled ones' ticks). The columns are built untimed."""
    columns: tuple[Any, Any] = (PredictionColumns(), LabelColumns())
    for kind, found in enumerate(columns):
        chosen = [(i, raw) for i, (_, k, _, raw) in enumerate(events) if k == kind]
        found.add([i for i, _ in chosen], [parse_prediction(raw) if kind == 0 else parse_label(raw)
                                           for _, raw in chosen])
    engine = Engine(config, revisions=False)
    gc.collect()
    started = time.perf_counter()
    taken = engine.take_settled(*columns)
    rest = sorted((float(found.timestamps[i]), kind, found.rows[i], found.record(i))
                  for kind, (found, mask) in enumerate(zip(columns, taken, strict=True))
                  for i in np.flatnonzero(~mask).tolist())
    ticks = engine.ticks(np.concatenate([found.timestamps[mask] for found, mask in zip(columns, taken, strict=True)]))
    for item in interleaved(rest, ticks, 4096):
        if type(item) is float:
            engine.observe(item)
        else:
            engine.receive_many([e[3] for e in item])  # type: ignore[union-attr]
            engine.metric_records.clear()
    engine.finish()
    elapsed = time.perf_counter() - started
    assert engine.balance() == {"predictions": 0, "labels": 0}
    return engine.health.pairs / elapsed


def decode_run(events: list[tuple[float, int, int, dict[str, object]]]) -> float:
    """Pairs per second of ``orjson.loads`` alone on the same records as JSON lines."""
    lines = [orjson.dumps(raw) for _, _, _, raw in events]
    pairs = sum(kind for _, kind, _, _ in events)  # one label a pair
    loads = orjson.loads
    started = time.perf_counter()
    for line in lines:
        loads(line)
    return pairs / (time.perf_counter() - started)


def bytes_per_pending(n: int, config: Config) -> float:
    """Memory the engine keeps per unlabeled prediction: what is still allocated after the input
    records are dropped (request id strings, timestamps, join entries, expiry buckets)."""
    predictions, _ = streams(Scenario(pairs=n, rate_per_s=100.0, with_scores=False, segments=()))
    engine = Engine(config)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for raw in predictions:
        engine.prediction(parse_prediction(orjson.loads(orjson.dumps(raw))))
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert engine.pending()[0] == n
    return (after - before) / n


def replay_run(pairs: int, config: Config, folder: Path, label_delay_mean_s: float) -> float:
    predictions, labels = streams(scenario(pairs, label_delay_mean_s))
    p_path, l_path = folder / "p.jsonl", folder / "l.jsonl"
    for path, rows in ((p_path, predictions), (l_path, labels)):
        path.write_bytes(b"".join(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in rows))
    del predictions, labels
    result = replay(p_path, l_path, config, folder / "m.jsonl", folder / "a.jsonl", folder / "d.jsonl")
    return result.engine.health.pairs / result.seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--replay", action="store_true", help="also time mlmon replay from files")
    parser.add_argument("--pending", type=int, default=200_000)
    parser.add_argument("--label-delay-mean-s", type=float, default=300.0,
                        help="mean label delay: the longer, the more requests pending (and the more cache misses)")
    args = parser.parse_args()
    config = Config()
    report: dict[str, object] = {"pairs": args.pairs, "label_delay_mean_s": args.label_delay_mean_s,
                                 "windows": [w.name for w in config.windows],
                                 "python": sys.version.split()[0]}
    events = raw_events(args.pairs, args.label_delay_mean_s)
    # The 2M input dicts are held by this script only (a real adapter streams them): move them out
    # of the cyclic collector's reach, or every full collection walks them and bills the engine.
    gc.collect()
    gc.freeze()
    unscored = raw_events(args.pairs, args.label_delay_mean_s, with_scores=False)
    gc.collect()
    gc.freeze()
    runs, runs_unscored, runs_one, runs_columns, decodes = [], [], [], [], []
    for _ in range(args.repeat):  # in turns, so that the machine's drift reaches all alike
        runs.append(engine_run(events, config))
        runs_columns.append(columns_run(events, config))
        runs_unscored.append(engine_run(unscored, config))
        runs_one.append(engine_run(events, config, batched=False))
        decodes.append(decode_run(events))
    del events, unscored
    decode = statistics.median(decodes)
    report["orjson_decode_pairs_per_s"] = {"median": round(decode), "runs": [round(r) for r in decodes]}
    report["engine_pairs_per_s"] = {"median": round(statistics.median(runs)), "runs": [round(r) for r in runs],
                                    "ratio_to_decode": round(statistics.median(runs) / decode, 3)}
    report["engine_columns_final_only_pairs_per_s"] = {
        "median": round(statistics.median(runs_columns)), "runs": [round(r) for r in runs_columns],
        "ratio_to_decode": round(statistics.median(runs_columns) / decode, 3)}
    report["engine_one_by_one_pairs_per_s"] = {"median": round(statistics.median(runs_one)),
                                               "runs": [round(r) for r in runs_one]}
    report["engine_unscored_pairs_per_s"] = {"median": round(statistics.median(runs_unscored)),
                                             "runs": [round(r) for r in runs_unscored]}
    # What scores cost a pair: log loss, Brier, and the score histograms (AUC, AP, calibration)
    report["scores_cost_us_per_pair"] = round(
        1e6 / statistics.median(runs) - 1e6 / statistics.median(runs_unscored), 2)
    if args.replay:
        with tempfile.TemporaryDirectory() as folder:
            runs = [replay_run(args.pairs, config, Path(folder), args.label_delay_mean_s) for _ in range(args.repeat)]
        report["replay_pairs_per_s"] = {"median": round(statistics.median(runs)), "runs": [round(r) for r in runs]}
    report["bytes_per_pending_prediction"] = round(bytes_per_pending(args.pending, config), 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
