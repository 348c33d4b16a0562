"""Where every input record went: the join's health counters, and the balance that proves it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["LAG_BUCKETS_S", "Health"]

LAG_BUCKETS_S = (1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 43200.0, 86400.0, math.inf)


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
    label_lag_sum_s: float = 0.0
    label_lag_buckets: list[int] = field(default_factory=lambda: [0] * len(LAG_BUCKETS_S))

    def balance(self, pending_predictions: int, pending_labels: int) -> dict[str, int]:
        """Inputs minus every place they went: both figures are 0 when nothing was lost."""
        return {
            "predictions": self.predictions - self.pairs - self.duplicate_predictions
            - self.expired_predictions - self.invalid_predictions - pending_predictions,
            "labels": self.labels - self.joined_labels - self.duplicate_labels - self.orphaned_labels
            - self.late_labels - self.invalid_labels - pending_labels,
        }
