"""A CUSUM detector rule's delay and false alarms on simulated Bernoulli streams, next to Lorden's
limit: the table in the README.

    python -m benchmarks.detectors --seeds 40 --stationary 2000000

For each baseline accuracy, ``--seeds`` streams of ``--before`` pairs in control (the baseline
learns from them), then a fall of exactly ``drop``: the mean delay (pairs after the fall until
the alarm), Wald's approximation for the design reached, and the limit ln(ARL0) / KL(p1 || p0).
Then ``--stationary`` pairs in control per baseline, baseline learned from scratch: the false
alarms raised. One rules entry for every baseline (the default ``drop`` and ``false_alarm_pairs``).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics

from stream.core.detectors import Cusum, DetectorRule, delay_limit_pairs, expected_delay_pairs

RULE = {"name": "AccuracyDrop", "metric": "accuracy", "detector": "cusum", "drop": 0.05}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=40)
    parser.add_argument("--before", type=int, default=60_000, help="pairs in control before the fall")
    parser.add_argument("--stationary", type=int, default=2_000_000, help="pairs in control per baseline")
    parser.add_argument("--baselines", default="0.62,0.75,0.85,0.95")
    args = parser.parse_args()
    rule = DetectorRule.parse(RULE)
    rows = []
    for baseline in (float(b) for b in args.baselines.split(",")):
        delays, wald = [], []
        for seed in range(args.seeds):
            rng = random.Random(seed)
            cusum = Cusum({})
            for _ in range(args.before):
                cusum.step(rule, rng.random() >= baseline)
            design = cusum.current()
            assert design is not None
            wald.append(expected_delay_pairs(design))
            n = 0
            while True:
                n += 1
                if cusum.step(rule, rng.random() >= baseline - rule.drop) == "firing":
                    break
            delays.append(n)
        rng = random.Random(1000)
        cusum = Cusum({})
        alarms = sum(cusum.step(rule, rng.random() >= baseline) == "firing" for _ in range(args.stationary))
        limit = delay_limit_pairs(baseline, rule.drop, rule.false_alarm_pairs)
        rows.append({"baseline": baseline, "limit_pairs": round(limit),
                     "mean_delay_pairs": round(statistics.mean(delays)),
                     "ratio_to_limit": round(statistics.mean(delays) / limit, 3),
                     "wald_pairs": round(statistics.mean(wald)), "false_alarms": alarms,
                     "stationary_pairs": args.stationary})
    print(json.dumps({"drop": rule.drop, "false_alarm_pairs": rule.false_alarm_pairs, "seeds": args.seeds,
                      "before": args.before, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
