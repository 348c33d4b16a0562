"""Alerts without hand-set thresholds: a Bernoulli CUSUM per series, against a baseline it learns,
with a promised false-alarm rate.

A detector rule watches one per-pair proportion on each series its globs select, one labeled pair
at a time in completion order (the later of a pair's two timestamps, ties by request id):
``accuracy`` (the prediction was right), ``recall.<class>`` (of pairs labeled <class>, predicted
<class>), ``precision.<class>`` (of pairs predicted <class>, labeled <class>), or ``within.<x>``
(a regression's prediction within x of its target). A pair the proportion counts against is a
*miss*; the detector fires when the miss rate rises ``drop`` above its baseline.

Page's CUSUM: ``S = max(0, S + llr)``, where ``llr`` is the log-likelihood ratio of the pair under
a miss rate of ``p1 = p0 + drop`` against the in-control rate ``p0``; it fires when ``S`` reaches
``h = ln(false_alarm_pairs)``. With exact log-likelihood ratios, ``exp(S)`` grows no faster than a
martingale while the miss rate is at most ``p0``, so a false alarm comes on average no sooner than
``e^h`` pairs (Lorden 1971): at most one per ``false_alarm_pairs`` pairs is a bound, not an
estimate (and a loose one: measured runs between false alarms are far longer). After a change to
``p1`` the mean delay is at most about ``h / KL(p1 || p0)`` pairs (Wald's approximation,
``expected_delay_pairs``; the reflection at zero makes it shorter), near the least any detector
with that false-alarm rate can have (``delay_limit_pairs``).

The baseline is the miss rate of the series' first ``baseline_pairs`` pairs, then of every pair the
detector judged in control: each time ``S`` returns to zero, the pairs since its last zero join
the baseline (the pairs of an alarm's episode never do). Being learned, it is uncertain: the
detector is designed for the upper Wilson bound (z = 2) of the in-control miss rate, so the bound
on false alarms holds for any true rate below it. The margin shrinks as the baseline learns, and the
delay comes near the limit (``expected_delay_pairs``). A slow drift of a few pairs' worth at a time
moves a long baseline little, but it may be absorbed: ``max_baseline_shift`` bounds how far the
learned baseline may move from the first one, and ``baseline: x`` fixes it.

Once fired, a second CUSUM watches for the way back (the ratio of ``p0`` against ``p1``, the same
``h``): when it reaches ``h`` the alert resolves, ``S`` starts again from zero and the baseline
learns again. One firing and one resolved event per episode.

>>> d = design(0.15, 100_000, 0.05, 1_000_000)
>>> round(delay_limit_pairs(0.85, 0.05, 1_000_000)), round(expected_delay_pairs(d, 0.05))
(1529, 1691)
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from typing import Any

from stream.core.errors import ConfigError
from stream.core.keys import fingerprint
from stream.core.metrics import wilson_interval
from stream.core.rules import DEFAULT_RUNBOOK, parse_globs, parse_number, rfc3339

__all__ = ["METRICS", "Cusum", "Design", "DetectorRule", "alert_event", "bernoulli_kl", "delay_limit_pairs",
           "design", "expected_delay_pairs"]

METRICS = ("accuracy", "recall.<class>", "precision.<class>", "within.<tolerance>")
MARGIN_Z = 2.0  # the in-control miss rate the detector is designed for: the upper Wilson bound at this z
REDESIGN_EVERY = 64  # the baseline is read again once it has grown by 1/64 since the last design
_KINDS = ("accuracy", "recall", "precision", "within")


def bernoulli_kl(p: float, q: float) -> float:
    """KL(Bernoulli(p) || Bernoulli(q)), in nats.

    >>> round(bernoulli_kl(0.20, 0.15), 6)
    0.009037
    """
    total = 0.0
    if p > 0:
        total += p * math.log(p / q)
    if p < 1:
        total += (1 - p) * math.log((1 - p) / (1 - q))
    return total


def delay_limit_pairs(baseline: float, drop: float, false_alarm_pairs: float) -> float:
    """Lorden's limit: the least mean delay (pairs after the change) of any detector of a fall from
    ``baseline`` to ``baseline - drop`` that raises at most one false alarm per ``false_alarm_pairs``."""
    p0 = 1.0 - baseline
    return math.log(false_alarm_pairs) / bernoulli_kl(min(p0 + drop, 1.0), p0)


@dataclass(frozen=True)
class Design:
    """A detector's parameters: the baseline miss rate (estimated), the in-control rate it is
    designed for, the alarm rate, the CUSUM's steps for a miss and a hit, and its threshold."""

    p0: float
    p0_design: float
    p1: float
    miss_step: float
    hit_step: float
    h: float


def design(p0: float, n: int | None, drop: float, false_alarm_pairs: float) -> Design | None:
    """The detector for a baseline miss rate ``p0`` learned from ``n`` pairs (None: given, exact);
    None while the baseline is too uncertain to tell a fall of ``drop`` from noise."""
    p0_design = p0 if n is None else wilson_interval(p0, n, MARGIN_Z)[1]
    p1 = min(p0 + drop, 1.0 - 1e-9)
    if not 0.0 < p0_design < p1:
        if p0_design <= 0.0 < p1:  # a given baseline of no misses: any miss is evidence
            p0_design = min(1e-9, p1 / 2)
        else:
            return None
    return Design(p0, p0_design, p1, math.log(p1 / p0_design), math.log((1 - p1) / (1 - p0_design)),
                  math.log(false_alarm_pairs))


def expected_delay_pairs(d: Design, drop: float | None = None) -> float:
    """Wald's approximation of the mean delay of design ``d`` after the miss rate rises to its
    baseline plus ``drop`` (by default, to the rate it is designed to catch): ``h`` over the drift."""
    p1 = d.p1 if drop is None else min(d.p0 + drop, 1.0)
    drift = p1 * d.miss_step + (1 - p1) * d.hit_step
    return d.h / drift if drift > 0 else math.inf


@dataclass(frozen=True)
class DetectorRule:
    name: str
    metric: str
    drop: float
    false_alarm_pairs: float = 1_000_000
    baseline_pairs: int = 2000
    baseline: float | None = None  # given: fixed, never learned
    max_baseline_shift: float | None = None  # how far a learned baseline may move from the first one
    models: tuple[str, ...] = ("*",)
    segments: tuple[str, ...] = ("",)
    severity: str = "warning"
    runbook_url: str = DEFAULT_RUNBOOK
    summary: str = ""
    description: str = ""
    detector: str = "cusum"
    tolerance: float = math.nan  # within.<x>: x

    def selects(self, model: str, segment_key: str) -> bool:
        return (any(fnmatch.fnmatchcase(model, pattern) for pattern in self.models)
                and any(fnmatch.fnmatchcase(segment_key, pattern) for pattern in self.segments))

    @property
    def kind(self) -> str:
        return self.metric.split(".", 1)[0]

    @property
    def argument(self) -> str:
        return self.metric.split(".", 1)[1] if "." in self.metric else ""

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> DetectorRule:
        name = raw.get("name")
        if not isinstance(name, str) or not name.isidentifier():
            raise ConfigError(f"rule name {name!r} must be a CamelCase identifier, e.g. AccuracyDrop")
        where = f"rule {name}"
        known = set(cls.__dataclass_fields__) - {"tolerance"}  # within.<x> gives that
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} for a detector rule "
                              "(no window, below or above: it watches every pair)")
        if raw.get("detector") != "cusum":
            raise ConfigError(f"{where}: 'detector' must be cusum, got {raw.get('detector')!r}")
        metric = raw.get("metric")
        kind, _, argument = metric.partition(".") if isinstance(metric, str) else ("", "", "")
        if kind not in _KINDS or (kind == "accuracy") != (argument == ""):
            raise ConfigError(f"{where}: a detector watches a per-pair proportion, one of {', '.join(METRICS)}; "
                              f"got {metric!r}")
        if kind == "within" and not _is_number(argument):
            raise ConfigError(f"{where}: within.<tolerance> takes a number, e.g. within.5.0; got {metric!r}")
        drop = parse_number(raw.get("drop"), f"{where}: drop")
        if not 0 < drop < 1:
            raise ConfigError(f"{where}: drop is a fall in the proportion, between 0 and 1 (e.g. 0.05)")
        false_alarm_pairs = parse_number(raw.get("false_alarm_pairs", 1_000_000), f"{where}: false_alarm_pairs")
        if false_alarm_pairs < 10:
            raise ConfigError(f"{where}: false_alarm_pairs must be at least 10")
        baseline_pairs = raw.get("baseline_pairs", 2000)
        if isinstance(baseline_pairs, bool) or not isinstance(baseline_pairs, int) or baseline_pairs < 1:
            raise ConfigError(f"{where}: baseline_pairs must be a whole number >= 1, got {baseline_pairs!r}")
        baseline = raw.get("baseline")
        if baseline is not None and not (0 < parse_number(baseline, f"{where}: baseline") <= 1):
            raise ConfigError(f"{where}: baseline is the proportion in control, in (0, 1]")
        shift = raw.get("max_baseline_shift")
        if shift is not None and not (0 <= parse_number(shift, f"{where}: max_baseline_shift") < 1):
            raise ConfigError(f"{where}: max_baseline_shift is a proportion in [0, 1)")
        return cls(name=name, metric=metric, drop=drop, false_alarm_pairs=false_alarm_pairs,  # type: ignore[arg-type]
                   baseline_pairs=baseline_pairs, baseline=None if baseline is None else float(baseline),
                   max_baseline_shift=None if shift is None else float(shift),
                   models=parse_globs(raw.get("models", ["*"]), where),
                   segments=parse_globs(raw.get("segments", [""]), where),
                   severity=str(raw.get("severity", "warning")),
                   runbook_url=str(raw.get("runbook_url", DEFAULT_RUNBOOK)),
                   summary=str(raw.get("summary", "")), description=str(raw.get("description", "")),
                   tolerance=float(argument) if kind == "within" else math.nan)


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


@dataclass
class Cusum:
    """One series' detector for one rule: the baseline's counts, the statistic, the episode."""

    labels: dict[str, str]
    baseline_n: int = 0
    baseline_misses: int = 0
    first_p0: float | None = None  # the baseline's miss rate when it was first read
    designed_n: int = 0
    statistic: float = 0.0
    since_zero: int = 0  # pairs since the statistic was last zero (the change's length when it fires)
    misses_since_zero: int = 0
    firing: bool = False
    starts_at: float = 0.0
    episode_pairs: int = 0  # at the last event: the pairs since the statistic's last zero (the change's length)
    estimate: float = math.nan  # at the last event: the proportion over those pairs
    p0: float | None = None  # the design in use (None: still learning)
    p0_design: float = 0.0
    p1: float = 0.0
    miss_step: float = 0.0
    hit_step: float = 0.0
    h: float = math.inf

    def step(self, rule: DetectorRule, miss: bool) -> str | None:
        """One pair in completion order: "firing", "resolved" or None."""
        if self.p0 is None:
            if rule.baseline is None:  # learning the baseline first
                self.baseline_n += 1
                self.baseline_misses += miss
                if self.baseline_n >= rule.baseline_pairs:
                    self._design(rule)
                return None
            self._design(rule)  # given: judged from the first pair
        step = self.miss_step if miss else self.hit_step
        statistic = self.statistic - step if self.firing else self.statistic + step  # back: p0 against p1
        self.since_zero += 1
        self.misses_since_zero += miss
        if statistic > 0.0:
            self.statistic = statistic
            if statistic < self.h:
                return None
            self.firing = not self.firing
            self.episode_pairs = self.since_zero
            self.estimate = 1.0 - self.misses_since_zero / self.since_zero
            self.statistic, self.since_zero, self.misses_since_zero = 0.0, 0, 0
            return "firing" if self.firing else "resolved"
        self.statistic = 0.0
        if not self.firing and rule.baseline is None:  # judged in control: they join the baseline
            self.baseline_n += self.since_zero
            self.baseline_misses += self.misses_since_zero
            if self.baseline_n * REDESIGN_EVERY >= self.designed_n * (REDESIGN_EVERY + 1):
                self._design(rule)
        self.since_zero = self.misses_since_zero = 0
        return None

    def _design(self, rule: DetectorRule) -> None:
        if rule.baseline is not None:
            p0, n = 1.0 - rule.baseline, None
        else:
            p0, n = self.baseline_misses / self.baseline_n, self.baseline_n
            if self.first_p0 is None:
                self.first_p0 = p0
            if rule.max_baseline_shift is not None:
                p0 = min(max(p0, self.first_p0 - rule.max_baseline_shift), self.first_p0 + rule.max_baseline_shift)
        self.designed_n = self.baseline_n
        d = design(p0, n, rule.drop, rule.false_alarm_pairs)
        if d is None:
            self.p0 = None
            return
        self.p0, self.p0_design, self.p1 = d.p0, d.p0_design, d.p1
        self.miss_step, self.hit_step, self.h = d.miss_step, d.hit_step, d.h

    def current(self) -> Design | None:
        if self.p0 is None:
            return None
        return Design(self.p0, self.p0_design, self.p1, self.miss_step, self.hit_step, self.h)


def alert_event(rule: DetectorRule, state: Cusum, status: str, now: float) -> dict[str, Any]:
    """An alert event, as threshold rules make them, with what the detector found."""
    labels = state.labels
    d = state.current()
    assert d is not None
    baseline = 1.0 - d.p0
    where = f"{labels['model']} {labels['model_version']}"
    segment = ", ".join(f"{k[8:]}={v}" for k, v in labels.items() if k.startswith("segment_"))
    if segment:
        where += f" ({segment})"
    if status == "firing":
        summary = rule.summary or f"{rule.metric} of {where} fell below its baseline {baseline:.4g}"
        description = rule.description or (
            f"A CUSUM detector judged {rule.metric} fallen by {rule.drop:g} or more from its baseline "
            f"{baseline:.4g}; promised at most one false alarm per {rule.false_alarm_pairs:,.0f} pairs.")
    else:
        summary = f"{rule.metric} of {where} is back at its baseline {baseline:.4g}"
        description = rule.description or f"A CUSUM detector judged {rule.metric} back at its baseline."
    event: dict[str, Any] = {
        "alertname": rule.name,
        "status": status,
        "labels": dict(labels),
        "annotations": {"summary": summary, "description": description, "runbook_url": rule.runbook_url,
                        "baseline": f"{baseline:.4f}", "estimate": f"{state.estimate:.4f}",
                        "change_pairs": str(state.episode_pairs),
                        "false_alarm_pairs": f"{rule.false_alarm_pairs:.0f}"},  # Alertmanager carries these
        "value": state.estimate,
        "threshold": baseline - rule.drop,
        "n": state.episode_pairs,
        "starts_at": rfc3339(state.starts_at),
        "fingerprint": fingerprint(labels),
        "detector": {"kind": rule.detector, "baseline": baseline, "baseline_pairs": state.baseline_n,
                     "estimate": state.estimate, "change_pairs": state.episode_pairs,
                     "designed_for": 1.0 - d.p0_design, "drop": rule.drop, "threshold": d.h,
                     "false_alarm_pairs": rule.false_alarm_pairs,
                     "expected_delay_pairs": round(expected_delay_pairs(d), 1),
                     "delay_limit_pairs": round(delay_limit_pairs(baseline, rule.drop, rule.false_alarm_pairs), 1)},
    }
    if status == "resolved":
        event["ends_at"] = rfc3339(now)
    return event

