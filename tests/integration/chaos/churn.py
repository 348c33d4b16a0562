"""Rebalance churn, on demand: how often a worker joining and leaving under load miscounts.

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 python tests/integration/chaos/churn.py --runs 10

Each run sends the chaos tests' traffic (12,000 pairs with duplicates, early and missing labels,
about 80 s at 300 pairs/s, then far-future ticks that close every window) to a fresh group of
topics while a second worker joins and leaves every 3 to 8 s beside a first one, then compares
every final window with scikit-learn (tests/worker_harness.py). Prints one line per run: OK or
the windows that differ, and how many times the workers sought back to a message faust skipped
(``rereads``, docs/worker.md). The broker is KAFKA_BOOTSTRAP_SERVERS (required).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[3]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "integration" / "chaos")]

from test_faults import load, sending  # noqa: E402

import worker_harness as harness  # noqa: E402


def churn_run(seed: int, seconds: float) -> tuple[list[str], int]:
    """One run: the windows that differ from scikit-learn (empty: exact), and the rereads."""
    folder = Path(tempfile.mkdtemp(prefix=f"mlmon-churn-{seed}-"))
    config, path = harness.setup(SimpleNamespace(bootstrap=os.environ["KAFKA_BOOTSTRAP_SERVERS"]), folder)
    scenario = load(seed=seed)
    first = harness.Worker(path, folder / "worker1.log").start()
    second = harness.Worker(harness.second_member(path, folder), folder / "worker2.log")
    sender = sending(config, scenario, rate_per_s=300.0)
    rng = random.Random(seed)
    started = time.monotonic()
    try:
        while time.monotonic() - started < seconds:
            time.sleep(rng.uniform(3.0, 8.0))
            second.start()
            time.sleep(rng.uniform(3.0, 8.0))
            second.stop(signal.SIGTERM)
        second.start()
        sender.join()
        expected = harness.expected_pairs(scenario)
        finals = harness.final_records(config, set(expected), timeout_s=300, worker=first)
        wrong = [f"{key}: n={finals[key]['n']}, expected {len(pairs)}"
                 for key, pairs in expected.items() if finals[key]["n"] != len(pairs)]
    finally:
        sender.join()
        first.stop()
        second.stop()
    rereads = sum(log.read_text(errors="replace").count("again from offset") for log in folder.glob("worker*.log"))
    return wrong, rereads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1000, help="of the first run; each run adds one")
    parser.add_argument("--churn-s", type=float, default=70.0, help="how long the second worker comes and goes")
    args = parser.parse_args()
    failed = 0
    for seed in range(args.seed, args.seed + args.runs):
        wrong, rereads = churn_run(seed, args.churn_s)
        failed += bool(wrong)
        print(f"run {seed}: {'; '.join(wrong) or 'OK'} (rereads {rereads})", flush=True)
    print(f"{args.runs - failed} of {args.runs} runs exact")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
