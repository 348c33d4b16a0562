"""Sampling by request: ``sample: 0.1`` keeps the requests whose request-id hash falls in the first
tenth of its range, and the standard errors of the figures computed from them.

The decision depends on the request id alone: murmur2 (seed 0) of its UTF-8 bytes (a lone
surrogate, which a Python caller may pass, encoded as such rather than refused), as an unsigned
32-bit number, kept when below ``rate * 2**32``. So a request's predictions and labels are kept or
dropped together, on every partition, worker and replay, and a user can reproduce the set
(``murmurhash2.murmurhash2(request_id.encode(), 0) < rate * 2**32``). The engine drops the records
of the other requests as they come, before anything else (event time included), and counts them
(``Health.unsampled_predictions`` / ``unsampled_labels``): figures are those of the sampled
requests exactly.

>>> sampler = Sampler(0.5)
>>> sampler.keeps("req-1"), sampler.keeps_many(["req-2", "req-3", "req-4"])
(True, [True, True, False])

A metric record of sampled requests carries the rate and, for the figures that are ratios of sums
over pairs, their standard errors as estimates of the figures of every request
(``standard_errors``): the ratio estimator's, with the finite-population correction (1 - rate),
so a rate of 1 gives 0. Accuracy, a class's precision, recall and F1 (classification), and the
mean absolute and mean error (regression) have one; the others (macro and weighted averages, AUC,
log loss) are left out.

>>> errors = standard_errors({"classes": ["a", "b"], "confusion_matrix": [[40, 10], [5, 45]],
...                           "metrics": {"accuracy": 0.85}}, 100, 0.1)
>>> round(errors["accuracy"], 4), round(errors["precision"]["a"], 4)
(0.034, 0.0447)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from typing import Any

from murmurhash2 import murmurhash2

from stream.core.health import Health
from stream.core.records import Label, Prediction

__all__ = ["SAMPLE_SEED", "Sampler", "sample_hash", "standard_errors"]

SAMPLE_SEED = 0  # not Kafka's partitioner seed: which requests are sampled does not follow partitions


def sample_hash(request_id: str) -> int:
    """The request id's hash that decides whether it is sampled: unsigned, 32 bits."""
    return murmurhash2(request_id.encode("utf-8", "surrogatepass"), SAMPLE_SEED) & 0xFFFFFFFF


class Sampler:
    """Which requests a sampling ``rate`` in (0, 1] keeps (see the module)."""

    def __init__(self, rate: float) -> None:
        if not 0.0 < rate <= 1.0:
            raise ValueError(f"a sampling rate is in (0, 1], not {rate!r}")
        self.rate = rate
        self.every = rate == 1.0
        self._below = math.ceil(rate * (1 << 32))

    def keeps(self, request_id: str) -> bool:
        return self.every or sample_hash(request_id) < self._below

    def keeps_many(self, request_ids: Iterable[str]) -> list[bool]:
        below, every = self._below, self.every
        return [every or sample_hash(r) < below for r in request_ids]

    def leaves_out(self, record: Prediction | Label, health: Health) -> bool:
        """Whether this leaves ``record`` out; if so, it is counted in ``health`` as received and
        unsampled."""
        if self.every or self.keeps(record.request_id):
            return False
        _count(record, health)
        return True

    def kept(self, records: Sequence[Prediction | Label], health: Health) -> list[int] | None:
        """The indexes of the ``records`` this keeps, or None for all of them; the others are
        counted in ``health`` as received and unsampled."""
        if self.every:
            return None
        keeps = self.keeps_many(r.request_id for r in records)
        if all(keeps):
            return None
        for record, keep in zip(records, keeps, strict=True):
            if not keep:
                _count(record, health)
        return list(itertools.compress(range(len(records)), keeps))


def _count(record: Prediction | Label, health: Health) -> None:
    """A record left out: received, and unsampled."""
    prediction = type(record) is Prediction
    health.add_unsampled(int(prediction), int(not prediction))


def _ratio_error(terms: float, x_sum: float, n: int, rate: float) -> float | None:
    """The standard error of a ratio estimator sum(y) / sum(x) over ``n`` pairs sampled at
    ``rate``: sqrt((1 - rate) n / (n - 1) sum((y - R x)^2)) / sum(x), given that sum as ``terms``."""
    if n < 2 or x_sum <= 0:
        return None
    return math.sqrt(max(0.0, (1.0 - rate) * n / (n - 1) * terms)) / x_sum


def standard_errors(figures: dict[str, Any], n: int, rate: float) -> dict[str, Any]:
    """The standard errors of a record's figures (its ``classes``, ``confusion_matrix`` and
    ``metrics``, over ``n`` pairs sampled at ``rate``; see the module). A figure with fewer than
    two pairs, or none to divide by, gets null."""
    metrics = figures.get("metrics") or {}
    if "confusion_matrix" not in figures:  # regression: the mean of |e| and of e, from the mean of e^2
        if not metrics or n < 2:
            return {}
        mse = metrics["rmse"] ** 2
        return {name: _ratio_error(n * max(0.0, mse - metrics[name] ** 2), n, n, rate)
                for name in ("mae", "mean_error") if name in metrics}
    cells, classes = figures["confusion_matrix"], figures["classes"]
    if not n:
        return {}
    correct = sum(cells[i][i] for i in range(len(classes)))
    accuracy = correct / n
    out: dict[str, Any] = {
        "accuracy": _ratio_error(correct * (1 - accuracy) ** 2 + (n - correct) * accuracy ** 2, n, n, rate)}
    per_class: dict[str, dict[str, float | None]] = {"precision": {}, "recall": {}, "f1": {}}
    for i, name in enumerate(classes):
        tp = cells[i][i]
        fn = sum(cells[i]) - tp
        fp = sum(row[i] for row in cells) - tp
        for figure, x_sum, misses in (("precision", tp + fp, fp), ("recall", tp + fn, fn)):
            r = tp / x_sum if x_sum else 0.0
            per_class[figure][name] = _ratio_error(tp * (1 - r) ** 2 + misses * r ** 2, x_sum, n, rate)
        f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0  # pairs give y = 2 [tp], x = 2 [tp] + [fp] + [fn]
        per_class["f1"][name] = _ratio_error(tp * (2 - 2 * f1) ** 2 + (fp + fn) * f1 ** 2, 2 * tp + fp + fn, n, rate)
    out.update(per_class)
    return out
