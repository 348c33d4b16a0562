"""The query a data scientist would write instead of ``mlmon replay``: DuckDB reading the same JSONL
files (multi-threaded, every core), for the same final figures of ``benchmarks/replay.py``'s data
under the default settings.

Per request and model the earliest prediction, per request the earliest label; a pair when their
timestamps are at most the TTL apart; then, per model and version, overall and per segment value,
over tumbling 1h, tumbling 1d and cumulative windows of the prediction's time: the predictions,
the confusion counts, and 1,001-bin histograms of the positive class's score per label (what ROC
AUC is computed from). ``check`` holds mlmon's final records to the query's figures: predictions,
pairs, confusion matrix, accuracy and F1 per class exactly; ROC AUC within the sum of the two error
bounds (mlmon's stated one, and the histogram's: half the share of positive-negative pairs that
share a bin).

Needs ``duckdb`` (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import orjson

__all__ = ["check", "query", "seconds"]

_TS = """CASE WHEN json_type(timestamp) = 'VARCHAR' THEN epoch(CAST(timestamp ->> '$' AS TIMESTAMPTZ))
              ELSE CAST(timestamp AS DOUBLE) END"""
_PAIRS = f"""
CREATE TEMP TABLE p AS
  SELECT request_id, model, arg_min(model_version, ts) AS version, arg_min(prediction, ts) AS guess,
         arg_min(segment.country, ts) AS country, arg_min(scores['1'], ts) AS score, min(ts) AS ts
  FROM (SELECT *, {_TS} AS ts FROM read_json('{{p}}', format='newline_delimited', columns={{{{
        request_id: 'VARCHAR', model: 'VARCHAR', model_version: 'VARCHAR', timestamp: 'JSON',
        prediction: 'VARCHAR', segment: 'STRUCT(country VARCHAR)', scores: 'MAP(VARCHAR, DOUBLE)'}}}}))
  GROUP BY request_id, model;
CREATE TEMP TABLE pairs AS
  SELECT p.*, l.truth FROM p JOIN (
    SELECT request_id, arg_min(label, ts) AS truth, min(ts) AS ts
    FROM (SELECT *, {_TS} AS ts FROM read_json('{{l}}', format='newline_delimited', columns={{{{
          request_id: 'VARCHAR', timestamp: 'JSON', label: 'VARCHAR'}}}}))
    GROUP BY request_id) l USING (request_id)
  WHERE abs(l.ts - p.ts) <= {{ttl}};
"""
# Each window a pair (or prediction) counts in: overall and per segment value, times 1h, 1d and all.
_SETS = """GROUPING SETS ((model, version, hour, {k}), (model, version, country, hour, {k}),
  (model, version, day, {k}), (model, version, country, day, {k}),
  (model, version, {k}), (model, version, country, {k}))"""
_WINDOWED = """SELECT *, CAST(floor(ts / 3600) * 3600 AS BIGINT) AS hour,
                  CAST(floor(ts / 86400) * 86400 AS BIGINT) AS day FROM {table}"""
_PREDICTIONS = "SELECT model, version, country, hour, day, count(*) FROM ({w}) GROUP BY {sets}"
_CELLS = "SELECT model, version, country, hour, day, truth, guess, count(*) FROM ({w}) GROUP BY {sets}"
_BINS = ("SELECT model, version, country, hour, day, truth, CAST(round(score * 1000) AS INTEGER) AS bin, count(*) "
         "FROM ({w}) GROUP BY {sets}")


def query(predictions: Path, labels: Path, ttl_s: float = 86400) -> dict[str, list[tuple[Any, ...]]]:
    """The query's rows: predictions, confusion cells and score bins per window (a window is
    (model, version, country or None, hour or None, day or None); both None: cumulative)."""
    import duckdb

    con = duckdb.connect()
    con.execute(_PAIRS.format(p=predictions, l=labels, ttl=ttl_s))
    out = {"predictions": con.execute(_PREDICTIONS.format(w=_WINDOWED.format(table="p"), sets=_SETS.format(
        k="model"))).fetchall()}
    windowed = _WINDOWED.format(table="pairs")
    out["cells"] = con.execute(_CELLS.format(w=windowed, sets=_SETS.format(k="truth, guess"))).fetchall()
    out["bins"] = con.execute(_BINS.format(w=windowed, sets=_SETS.format(k="truth, bin"))).fetchall()
    con.close()
    return out


def seconds(predictions: Path, labels: Path) -> tuple[float, dict[str, list[tuple[Any, ...]]]]:
    started = time.perf_counter()
    rows = query(predictions, labels)
    return time.perf_counter() - started, rows


def _window(record: dict[str, Any]) -> tuple[Any, ...]:
    window = record["window"]
    country = record["segment"].get("country")
    size = window.get("size_s")
    hour = window["start"] if size == 3600 else None
    day = window["start"] if size == 86400 else None
    return record["model"], record["model_version"], country, hour, day


def check(metrics: Path, rows: dict[str, list[tuple[Any, ...]]]) -> dict[str, Any]:
    """mlmon's final records (JSONL) against the query's figures: what was compared, and what
    differs (should be nothing)."""
    predictions = {tuple(r[:5]): r[5] for r in rows["predictions"]}
    cells: dict[tuple[Any, ...], dict[tuple[str, str], int]] = defaultdict(dict)
    for *key, truth, guess, n in rows["cells"]:
        cells[tuple(key)][(truth, guess)] = n
    bins: dict[tuple[Any, ...], np.ndarray] = defaultdict(lambda: np.zeros((2, 1001), dtype=np.int64))
    for *key, truth, b, n in rows["bins"]:
        bins[tuple(key)][int(truth == "1"), b] += n
    differ: list[dict[str, Any]] = []
    compared, auc_beyond, auc_max_diff = 0, 0, 0.0
    for line in metrics.open("rb"):
        record = orjson.loads(line)
        key = _window(record)
        compared += 1
        counted = cells.get(key, {})
        classes = record.get("classes") or []
        matrix = [[counted.get((t, g), 0) for g in classes] for t in classes]
        n = sum(map(sum, matrix))
        ours = record.get("metrics", {})
        theirs: dict[str, Any] = {"n": n, "predictions": predictions.get(key, 0), "confusion_matrix": matrix}
        if n:
            theirs["accuracy"] = sum(matrix[i][i] for i in range(len(classes))) / n
            theirs["f1"] = {c: (2 * matrix[i][i] / (sum(matrix[i]) + sum(row[i] for row in matrix))
                                if sum(matrix[i]) + sum(row[i] for row in matrix) else 0.0)
                            for i, c in enumerate(classes)}
        mine = {"n": record["n"], "predictions": record["predictions"], "confusion_matrix": record["confusion_matrix"],
                **({"accuracy": ours.get("accuracy"), "f1": ours.get("f1")} if n else {})}
        if mine != theirs:
            differ.append({"window": key, "mlmon": mine, "query": theirs})
        if ours.get("roc_auc") is not None:
            auc, bound = _auc(bins[key])
            diff = abs(auc - ours["roc_auc"])
            auc_max_diff = max(auc_max_diff, diff)
            auc_beyond += diff > (ours.get("roc_auc_error_bound") or 0.0) + bound + 1e-12
    return {"windows_compared": compared, "windows_differing": len(differ), "first_differences": differ[:3],
            "roc_auc_max_difference": round(auc_max_diff, 6), "roc_auc_beyond_bounds": auc_beyond}


def _auc(counts: np.ndarray) -> tuple[float, float]:
    """ROC AUC from per-label score histograms (pairs in one bin count as ties), and its error
    bound: half the share of positive-negative pairs in one bin."""
    negatives, positives = counts[0].astype(float), counts[1].astype(float)
    below = np.cumsum(negatives) - negatives
    total = negatives.sum() * positives.sum()
    if not total:
        return float("nan"), 0.0
    return float((positives * (below + negatives / 2)).sum() / total), float((positives * negatives).sum() / total / 2)
