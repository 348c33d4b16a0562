"""Replay with months-late labels: the join's memory bounded by ``join_memory_mb``, the rest of
the pending predictions on disk, against the same replay with everything in memory.

    python -m benchmarks.pending --pending 20000000 --memory-mb 512
    python -m benchmarks.pending --pending 4000000 --memory-mb 100 --detector   # record by record

The data is a fraud model's: N predictions (scores, a segment, canonical UUID request ids) over
30 days of event time, and 85% of them labeled 40 to 59 days later (chargebacks), with
``join_ttl: 60d``; both files in time order. At day 30 every prediction is pending at once. Each
run is a fresh process (``mlmon replay``'s default output); this one watches it every half second:
the replaying process's resident memory, and the size on disk of what it keeps under
``join_store_dir`` (the join's store, and the files of the shares a large input is split into). In
turns: (1) ``join_memory_mb`` of ``--memory-mb``, (2) a budget that holds every pending prediction
in memory (and lets each of replay's two processes hold its half of the input at once, in one share,
nothing split to disk). Reports records per second, peak RSS, RSS above the budget, the peak bytes
on disk per pending prediction, and (1)'s throughput as a share of (2)'s. Replay runs its default
two processes (each half of the requests, and half of ``join_memory_mb``; a large input in many
shares, ``stream/replay/parts.py``): peak RSS is the sum of both processes' peaks. ``--detector``
replays with one CUSUM detector rule instead, which judges revisions in time order, so one process
takes every record one by one, and what exceeds the budget waits in the join's store on disk
(RocksDB). Never part of the test command.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

DAY_S = 86_400
START = 1_767_225_600

CHILD = """
import json, resource, sys, time
from pathlib import Path
from stream.config import Config
from stream.replay import replay
folder, memory_mb, store, detector = Path(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"
rules = [{"name": "AccuracyDrop", "metric": "accuracy", "detector": "cusum", "drop": 0.05, "models": ["*"]}]
config = Config.from_mapping({"join_ttl": "60d", "join_memory_mb": memory_mb, "join_store_dir": store,
                              "series_ttl": "90d", "rules": rules if detector else []})
started = time.perf_counter()
result = replay(folder / "p.jsonl", folder / "l.jsonl", config, folder / "m.jsonl", final_only=True)
health = result.engine.health
child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # the other share's process, if any
print(json.dumps({"seconds": time.perf_counter() - started, "pairs": health.pairs, "child_peak_rss_bytes": child,
                  "expired": health.expired_predictions, "late": health.late_labels,
                  "predictions": health.predictions, "labels": health.labels}))
"""


def write(folder: Path, n: int, seed: int = 1) -> tuple[int, int]:
    """N predictions over 30 days, in time order; 85% labeled 40 to 59 days later, in time order."""
    rng = random.Random(seed)
    labels: list[tuple[float, str, str]] = []
    step = 30 * DAY_S / n
    countries = ("DE", "FR", "US", "IT")
    with (folder / "p.jsonl").open("w") as out:
        lines = []
        for i in range(n):
            ts = START + i * step
            digits = f"{rng.getrandbits(128):032x}"
            rid = f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"
            truth = rng.random() < 0.02
            p = min(1.0, max(0.0, rng.gauss(0.7 if truth else 0.2, 0.2)))
            lines.append(f'{{"request_id":"{rid}","model":"fraud","model_version":"v3","timestamp":{ts:.3f},'
                         f'"prediction":"{int(p > 0.5)}","scores":{{"1":{p:.4f},"0":{1 - p:.4f}}},'
                         f'"segment":{{"country":"{countries[i % 4]}"}}}}\n')
            if rng.random() < 0.85:
                labels.append((ts + rng.uniform(40, 59) * DAY_S, rid, str(int(truth))))
            if len(lines) == 100_000:
                out.write("".join(lines))
                lines = []
        out.write("".join(lines))
    labels.sort()
    with (folder / "l.jsonl").open("w") as out:
        for start in range(0, len(labels), 100_000):
            out.write("".join(f'{{"request_id":"{rid}","timestamp":{ts:.3f},"label":"{value}"}}\n'
                              for ts, rid, value in labels[start:start + 100_000]))
    return n, len(labels)


def _status(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(field):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _size(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):  # a file RocksDB removed meanwhile
                total += os.stat(os.path.join(root, name)).st_size
    return total


def run(folder: Path, memory_mb: float, detector: bool = False) -> dict[str, Any]:
    """One replay in a fresh process, watched: its figures, peak RSS and the peak size of what it
    keeps on disk."""
    store = folder / f"store-{memory_mb:g}"
    store.mkdir(exist_ok=True)
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(folder), str(memory_mb), str(store),
                              str(int(detector))],
                             stdout=subprocess.PIPE, text=True)
    disk = rss = 0
    while child.poll() is None:
        disk = max(disk, _size(store))
        rss = _status(child.pid, "VmHWM:")
        time.sleep(0.5)
    out, _ = child.communicate()
    if child.returncode:
        raise SystemExit(f"replay failed ({child.returncode})")
    found = json.loads(out.strip().splitlines()[-1])
    return {**found, "peak_rss_bytes": rss + found["child_peak_rss_bytes"], "peak_store_bytes": disk,
            "memory_mb": memory_mb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pending", type=int, default=20_000_000, help="predictions, all pending at day 30")
    parser.add_argument("--memory-mb", type=float, default=256.0, help="join_memory_mb of the bounded run")
    parser.add_argument("--detector", action="store_true", help="replay with a detector rule: record by record, "
                        "one process, what exceeds the budget in the join's store")
    parser.add_argument("--folder", default="", help="where the data and stores go (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.folder or None) as name:
        folder = Path(name)
        started = time.perf_counter()
        predictions, labels = write(folder, args.pending)
        print(f"wrote {predictions:,} predictions and {labels:,} labels in {time.perf_counter() - started:.0f} s",
              file=sys.stderr)
        input_mb = sum(path.stat().st_size for path in folder.glob("*.jsonl")) / (1 << 20)
        # far above what the join takes; replay's two processes each hold half the input in one share
        everything_mb = max(args.pending * 400 / (1 << 20), 2 * input_mb) + 1024
        bounded, free = run(folder, args.memory_mb, args.detector), run(folder, everything_mb, args.detector)
    records = predictions + labels
    report = {"pending": predictions, "records": records}
    for name, found in (("bounded", bounded), ("in_memory", free)):
        report[name] = {"records_per_s": round(records / found["seconds"]), "seconds": round(found["seconds"], 1),
                        "peak_rss_mib": round(found["peak_rss_bytes"] / (1 << 20), 1),
                        "rss_above_budget_mib": round(found["peak_rss_bytes"] / (1 << 20) - found["memory_mb"], 1),
                        "disk_bytes_per_pending": round(found["peak_store_bytes"] / predictions, 1),
                        "rss_bytes_per_pending": round(found["peak_rss_bytes"] / predictions, 1),
                        "pairs": found["pairs"], "expired": found["expired"]}
    report["throughput_ratio"] = round(free["seconds"] / bounded["seconds"], 3)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
