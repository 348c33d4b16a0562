"""Where every input record went: the join's health counters, and the balance that proves it."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["LAG_BUCKETS_S", "LAG_UNIT", "Health", "lag_units"]

LAG_BUCKETS_S = (1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 43200.0, 86400.0, math.inf)
LAG_UNIT = 1 << 32  # label lags are summed in units of 2**-32 s, as Python integers
_LAG_EDGES = np.array(LAG_BUCKETS_S)


def lag_units(lag_s: float) -> int:
    """A label lag as a whole number of 2**-32 s, exactly: the difference of two timestamps from
    2000 on is a multiple of 2**-23 s (a float from 2**29 up has no finer bit), so the sum of lags
    does not depend on the order or batching of their pairs.

    >>> lag_units(1767225600.25 - 1767225600.0) == LAG_UNIT // 4
    True
    """
    return round(lag_s * LAG_UNIT)


@dataclass(slots=True)
class Health:
    """Where every input record went; ``balance()`` proves nothing was lost."""

    predictions: int = 0
    labels: int = 0
    pairs: int = 0  # predictions paired with their label (one label pairs with each model's prediction)
    joined_labels: int = 0  # labels that paired with at least one prediction
    duplicate_predictions: int = 0
    duplicate_labels: int = 0
    expired_predictions: int = 0
    orphaned_labels: int = 0
    late_labels: int = 0
    invalid_predictions: int = 0
    invalid_labels: int = 0
    refused_models: int = 0
    folded_classes: int = 0
    folded_segments: int = 0
    folded_versions: int = 0
    unsampled_predictions: int = 0  # records of requests that sampling leaves out (see core.sampling)
    unsampled_labels: int = 0
    label_lag_units: int = 0  # the pairs' label lags summed (see ``lag_units``)
    label_lag_buckets: list[int] = field(default_factory=lambda: [0] * len(LAG_BUCKETS_S))

    @property
    def label_lag_sum_s(self) -> float:
        return self.label_lag_units / LAG_UNIT

    def as_dict(self) -> dict[str, Any]:
        """Every counter, with the sum of label lags in seconds (``label_lag_sum_s``)."""
        out = asdict(self)
        del out["label_lag_units"]
        out["label_lag_sum_s"] = self.label_lag_sum_s
        return out

    def add_pairs(self, lags_s: npt.NDArray[np.float64]) -> None:
        """Count pairs whose label lags are ``lags_s``, as ``_pair`` counts each: the pairs, the
        exact sum of their lags and their lag buckets."""
        self.pairs += len(lags_s)
        self.label_lag_units += _units_summed(lags_s)
        buckets = self.label_lag_buckets
        counts = np.bincount(np.searchsorted(_LAG_EDGES, lags_s, side="left"), minlength=len(LAG_BUCKETS_S))
        for bucket, count in enumerate(counts.tolist()):
            buckets[bucket] += count

    def add_unsampled(self, predictions: int, labels: int) -> None:
        """Records received of the requests that sampling leaves out (see ``core.sampling``)."""
        self.predictions += predictions
        self.unsampled_predictions += predictions
        self.labels += labels
        self.unsampled_labels += labels

    def balance(self, pending_predictions: int, pending_labels: int) -> dict[str, int]:
        """Inputs minus every place they went: both figures are 0 when nothing was lost."""
        return {
            "predictions": self.predictions - self.pairs - self.duplicate_predictions
            - self.expired_predictions - self.invalid_predictions - self.unsampled_predictions - pending_predictions,
            "labels": self.labels - self.joined_labels - self.duplicate_labels - self.orphaned_labels
            - self.late_labels - self.invalid_labels - self.unsampled_labels - pending_labels,
        }


def _units_summed(lags_s: npt.NDArray[np.float64]) -> int:
    """The sum of ``lag_units`` of each lag, exactly: numpy's ``rint`` rounds halves to even as
    ``round`` does, and lags under 2**31 s make units under 2**63, summed as two halves of 32 bits
    (each half's sum fits 64 bits for fewer than 2**31 lags); longer lags are summed one by one."""
    if not len(lags_s) or len(lags_s) >= 1 << 31 or float(np.abs(lags_s).max()) >= 2.0**31:
        return sum(map(lag_units, lags_s.tolist()))
    units = np.rint(lags_s * LAG_UNIT).astype(np.int64)
    return (int((units >> 32).sum()) << 32) + int((units & 0xFFFFFFFF).sum())
