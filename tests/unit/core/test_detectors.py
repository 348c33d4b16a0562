"""CUSUM detector rules: delay near Lorden's limit, the promised false-alarm rate, learning, the
events, and the rule through replay (segments, order of arrival, recovery)."""

from __future__ import annotations

import random
import statistics
from typing import Any

import pytest

from stream import Monitor
from stream.config import Config
from stream.core.detectors import Cusum, DetectorRule, delay_limit_pairs, design, expected_delay_pairs
from stream.errors import ConfigError

# One rules file for every baseline below, as the issue asks: no number picked per model.
RULE = {"name": "AccuracyDrop", "metric": "accuracy", "detector": "cusum", "drop": 0.05,
        "baseline_pairs": 2000, "false_alarm_pairs": 1_000_000}


def detect(rule: DetectorRule, rng: random.Random, accuracy: float, pairs: int, cusum: Cusum) -> list[int]:
    """Feed ``pairs`` pairs of a Bernoulli stream; the pair numbers (from 1) of each firing."""
    fired = []
    for i in range(1, pairs + 1):
        if cusum.step(rule, rng.random() >= accuracy) == "firing":
            fired.append(i)
    return fired


@pytest.mark.parametrize("baseline", [0.62, 0.85, 0.95])
def test_mean_delay_within_a_quarter_of_lordens_limit(baseline: float) -> None:
    """A fall of exactly ``drop`` after a stretch in control (the baseline keeps learning over
    it): the mean delay over seeds is at most 1.25 x ln(ARL0) / KL(p1 || p0)."""
    rule = DetectorRule.parse(RULE)
    delays = []
    for seed in range(40):  # the delay's spread is about its mean: 40 seeds put the mean within about 16%
        rng = random.Random(seed)
        cusum = Cusum({})
        assert detect(rule, rng, baseline, 60_000, cusum) == []  # no false alarm in control
        fall = detect(rule, rng, baseline - 0.05, 40_000, cusum)
        assert fall, "the fall was never detected"
        delays.append(fall[0])
    limit = delay_limit_pairs(baseline, 0.05, 1_000_000)
    assert statistics.mean(delays) <= 1.25 * limit, (statistics.mean(delays), limit)


def test_at_most_one_false_alarm_per_promised_pairs() -> None:
    """3,000,000 pairs in control over three baselines, baselines learned from scratch: at most 3
    false alarms. And where alarms are frequent enough to count (a promise of one per 1,000
    pairs), the mean run between them is at least 1,000 pairs."""
    rule = DetectorRule.parse(RULE)
    alarms = 0
    for seed, baseline in enumerate((0.62, 0.85, 0.95)):
        alarms += len(detect(rule, random.Random(100 + seed), baseline, 1_000_000, Cusum({})))
    assert alarms <= 3
    often = DetectorRule.parse({**RULE, "false_alarm_pairs": 1000, "baseline": 0.85})
    cusum = Cusum({})
    rng = random.Random(7)
    runs, since = [], 0
    for _ in range(300_000):
        since += 1
        if cusum.step(often, rng.random() >= 0.85) == "firing":
            runs.append(since)
            since = 0
            cusum.firing, cusum.statistic = False, 0.0  # start again at once, to count the next one
    assert runs and statistics.mean(runs) >= 1000


def test_learned_baseline_costs_a_margin_that_shrinks() -> None:
    """Designed for the upper Wilson bound of the miss rate: far above the estimate after 2,000
    pairs, near it after 200,000; Wald's expected delay follows it down to near the limit."""
    limit = delay_limit_pairs(0.85, 0.05, 1_000_000)
    early, late = design(0.15, 2000, 0.05, 1e6), design(0.15, 200_000, 0.05, 1e6)
    assert early is not None and late is not None
    assert early.p0_design > late.p0_design > 0.15
    assert expected_delay_pairs(early) / limit > 2
    assert expected_delay_pairs(late) / limit < 1.15
    assert design(0.15, 30, 0.05, 1e6) is None  # too few pairs to tell a fall of 0.05 from noise


def test_resolves_when_back_at_the_baseline_and_learns_again() -> None:
    rule = DetectorRule.parse(RULE)
    cusum = Cusum({})
    rng = random.Random(1)
    statuses = []
    for accuracy, pairs in ((0.9, 30_000), (0.8, 5000), (0.9, 30_000)):
        for _ in range(pairs):
            status = cusum.step(rule, rng.random() >= accuracy)
            if status:
                statuses.append(status)
    assert statuses == ["firing", "resolved"]
    assert abs((1 - cusum.baseline_misses / cusum.baseline_n) - 0.9) < 0.01  # the episode was never learned


def test_fixed_baseline_and_bounded_shift() -> None:
    fixed = DetectorRule.parse({**RULE, "baseline": 0.9})
    cusum = Cusum({})
    cusum.step(fixed, False)
    assert cusum.p0 == pytest.approx(0.1) and cusum.baseline_n == 0  # no learning, from the first pair
    shifted = DetectorRule.parse({**RULE, "max_baseline_shift": 0.01, "baseline_pairs": 1000})
    cusum = Cusum({})
    rng = random.Random(2)
    for accuracy in (0.9, 0.885, 0.87, 0.855, 0.84):  # a slow drift, 0.015 a step
        detect(shifted, rng, accuracy, 20_000, cusum)
    assert cusum.p0 is not None and cusum.p0 <= cusum.first_p0 + 0.01 + 1e-12  # type: ignore[operator]


@pytest.mark.parametrize(("change", "message"), [
    ({"window": "tumbling_1h"}, "unknown key"),
    ({"tolerance": 3}, "unknown key"),
    ({"metric": "f1_macro"}, "per-pair proportion"),
    ({"metric": "recall"}, "per-pair proportion"),
    ({"metric": "within.abc"}, "takes a number"),
    ({"drop": 1.5}, "between 0 and 1"),
    ({"detector": "ewma"}, "must be cusum"),
    ({"false_alarm_pairs": 2}, "at least 10"),
    ({"baseline": 1.5}, "in (0, 1]"),
])
def test_refuses_what_it_cannot_judge(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("]", r"\]")):
        DetectorRule.parse({**RULE, **change})


def test_rules_file_holds_both_kinds_with_distinct_names() -> None:
    threshold = {"name": "Low", "metric": "accuracy", "window": "cumulative", "below": 0.5}
    config = Config.from_mapping({"windows": ["cumulative"], "rules": [threshold, RULE]})
    assert [r.name for r in config.rules] == ["Low"] and [d.name for d in config.detectors] == ["AccuracyDrop"]
    with pytest.raises(ConfigError, match="share a name"):
        Config.from_mapping({"windows": ["cumulative"], "rules": [{**threshold, "name": "AccuracyDrop"}, RULE]})


def stream(seed: int, pairs: int, fall_at: int, recover_at: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A binary model with two segment values, a pair every 5 s; DE's accuracy falls from 0.9 to
    0.8 between ``fall_at`` and ``recover_at``; US stays at 0.9."""
    rng = random.Random(seed)
    predictions, labels = [], []
    for i in range(pairs):
        ts = 1.7e9 + 5.0 * i
        country = "DE" if i % 2 else "US"
        accuracy = 0.8 if country == "DE" and fall_at <= i < recover_at else 0.9
        truth = rng.random() < 0.5
        guess = truth if rng.random() < accuracy else not truth
        predictions.append({"request_id": f"r{i}", "model": "m", "timestamp": ts, "prediction": str(int(guess)),
                            "segment": {"country": country}})
        labels.append({"request_id": f"r{i}", "timestamp": ts + rng.uniform(1, 600), "label": str(int(truth))})
    return predictions, labels


def alerts(predictions: list[dict[str, Any]], labels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    monitor = Monitor(config={"windows": ["cumulative"], "rules": [{**RULE, "segments": ["country=*"]}],
                              "source": {"predictions": predictions, "labels": labels}})
    monitor.setup()
    result = monitor.execute()
    assert result is not None
    return result.alerts


@pytest.mark.slow
def test_replay_detects_a_fall_in_one_segment_only_whatever_the_order_of_the_records() -> None:
    predictions, labels = stream(5, 60_000, 30_000, 45_000)
    events = alerts(predictions, labels)
    assert [(e["status"], e["labels"]["segment_country"]) for e in events] == [("firing", "DE"), ("resolved", "DE")]
    firing = events[0]
    detector = firing["detector"]
    assert abs(detector["baseline"] - 0.9) < 0.01 and detector["estimate"] < 0.85
    assert detector["false_alarm_pairs"] == 1_000_000 and detector["change_pairs"] > 0
    assert firing["labels"]["window"] == "pairs" and firing["labels"]["alertname"] == "AccuracyDrop"
    fell = 1.7e9 + 5.0 * 30_000
    from datetime import datetime
    fired = datetime.fromisoformat(firing["starts_at"]).timestamp()
    assert fell < fired < fell + 5.0 * 2 * 2 * delay_limit_pairs(0.9, 0.05, 1e6)  # DE has every other pair
    shuffled = [list(x) for x in (predictions, labels)]
    for rows in shuffled:
        random.Random(9).shuffle(rows)
    assert alerts(*shuffled) == events


def test_prometheus_and_alertmanager_carry_what_was_detected() -> None:
    from stream.core.engine import Engine
    from stream.core.records import parse_label, parse_prediction
    from stream.exporters.alerts import to_alertmanager
    from stream.exporters.prometheus import for_engine

    predictions, labels = stream(5, 40_000, 30_000, 40_000)
    config = Config.from_mapping({"windows": ["cumulative"], "rules": [{**RULE, "segments": ["country=*"]}]})
    engine = Engine(config, revisions=False)
    rows = [parse_prediction(p) for p in predictions] + [parse_label(x) for x in labels]
    engine.receive_many(sorted(rows, key=lambda r: r.timestamp))
    engine.finish()
    firing = next(e for e in engine.alert_events if e["status"] == "firing")
    annotations = to_alertmanager(firing)["annotations"]
    assert float(annotations["baseline"]) == pytest.approx(firing["detector"]["baseline"], abs=1e-4)
    assert int(annotations["change_pairs"]) == firing["detector"]["change_pairs"] > 0
    families = {f.name: f for f in for_engine(engine).collect()}
    on = {(s.labels["segment"], s.value) for s in families["mlmon_alert_firing"].samples}
    assert on == {("country=DE", 1.0), ("country=US", 0.0)}
    baselines = {s.labels["segment"]: s.value for s in families["mlmon_detector_baseline_ratio"].samples}
    assert baselines.keys() == {"country=DE", "country=US"} and all(abs(b - 0.9) < 0.01 for b in baselines.values())
    assert all(0 <= s.value < 1 for s in families["mlmon_detector_evidence_ratio"].samples)
