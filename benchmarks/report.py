"""The HTML report of a month of a busy model: its size, the time to make it, and the time a
headless Chromium takes to open it and draw every chart (against a blank page, in the same run).

    python -m benchmarks.report [--days 30] [--segments 20] [--versions 2] [--repeat 3]

The records are a replay's (hourly and daily windows and a cumulative one, a segment key with
``--segments`` values, scores: confusion matrix, calibration) with figures varied per window.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from stream import Monitor
from stream.report import Inputs, write_report
from stream.simulate import Scenario, streams

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def template() -> dict[str, Any]:
    predictions, labels = streams(Scenario(pairs=2000, rate_per_s=1.0))
    result = Monitor(config={"windows": ["tumbling 1h"], "source": {"predictions": predictions, "labels": labels}}
                     ).execute()
    assert result is not None
    return next(r for r in result.metrics if not r["segment"])


def month(days: int, segments: int, versions: int, seed: int = 1) -> list[dict[str, Any]]:
    base, rng, out = template(), random.Random(seed), []
    start = 1_767_225_600
    kinds = [("tumbling_1h", 3600, days * 24), ("tumbling_1d", 86400, days)]
    for version in range(versions):
        for segment in [{}] + [{"country": f"c{i:02d}"} for i in range(segments)]:
            for name, size, count in kinds:
                for i in range(count):
                    record = copy.deepcopy(base)
                    record.update(model_version=f"v{version + 1}", segment=segment, n=rng.randint(200, 2000))
                    record["window"] = {"kind": "tumbling", "name": name, "size_s": size, "start": start + i * size,
                                        "end": start + (i + 1) * size}
                    for metric in ("accuracy", "f1_macro", "roc_auc"):
                        record["metrics"][metric] = min(1.0, max(0.0, base["metrics"][metric] + rng.gauss(0, 0.02)))
                    out.append(record)
            cumulative = copy.deepcopy(base)
            cumulative.update(model_version=f"v{version + 1}", segment=segment, window={"kind": "cumulative",
                                                                                        "name": "cumulative"})
            out.append(cumulative)
    return out


def open_seconds(page: Path) -> float:
    from browser import FLAGS, chromium

    with tempfile.TemporaryDirectory() as profile:
        started = time.perf_counter()
        dom = subprocess.run([chromium(), *FLAGS, f"--user-data-dir={profile}", "--dump-dom", page.as_uri()],
                             capture_output=True, check=True, timeout=300).stdout.decode()
        seconds = time.perf_counter() - started
    if 'data-errors="[]"' not in dom:
        raise AssertionError("the page did not draw cleanly")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--segments", type=int, default=20)
    parser.add_argument("--versions", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    records = month(args.days, args.segments, args.versions)
    folder = Path(tempfile.mkdtemp(prefix="mlmon-report-bench-"))
    blank = folder / "blank.html"
    blank.write_text('<!DOCTYPE html><html><body data-errors="[]"></body></html>')
    make, opened, baseline = [], [], []
    page = folder / "report.html"
    for _ in range(args.repeat):
        started = time.perf_counter()
        write_report(page, Inputs(metrics=records))
        make.append(time.perf_counter() - started)
        baseline.append(open_seconds(blank))
        opened.append(open_seconds(page))
    print(json.dumps({
        "metric_records": len(records), "report_bytes": page.stat().st_size,
        "make_s": round(statistics.median(make), 3), "open_and_draw_s": round(statistics.median(opened), 3),
        "blank_page_open_s": round(statistics.median(baseline), 3),
    }, indent=2))


if __name__ == "__main__":
    main()
