"""What the core needs to know: the join, the windows, the limits, the rules and metrics. The
worker's settings (:class:`stream.config.Config`) extend these with Kafka's; the core reads
nothing else.

>>> Settings(regression_models=["price-*"]).is_regression("price-eu")
True
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

from stream.core.custom import CustomMetric
from stream.core.detectors import DetectorRule
from stream.core.rules import Rule
from stream.core.windows import WindowSpec

__all__ = ["DEFAULT_WINDOWS", "MAX_CLASSES", "Settings"]

MAX_CLASSES = 65_534  # class ids are stored in 16 bits (a pending prediction), with one more for "other"
DEFAULT_WINDOWS = ("tumbling 1h", "tumbling 1d", "cumulative")


@dataclass
class Settings:
    join_ttl_s: int = 86400
    windows: list[WindowSpec] = field(default_factory=lambda: [WindowSpec.parse(w) for w in DEFAULT_WINDOWS])
    emit_interval_s: int = 60  # event time between metric revisions in replay
    watermark_lag_s: int = 0  # how far behind the newest timestamp the watermark trails
    duplicate_labels: str = "earliest"  # which of a request's labels counts: the earliest or the latest stamped
    sample: float = 1.0  # the fraction of requests counted, chosen by request-id hash (see core.sampling)
    join_memory_mb: float = 1024.0  # memory for pending requests; beyond it they wait on disk (see core.spill)
    join_store_dir: str = ""  # where the join's store on disk goes (a temporary directory in it; "": the system's)
    regression_models: list[str] = field(default_factory=list)
    max_models: int = 100
    max_versions_per_model: int = 10
    max_classes: int = 100
    max_segment_keys: int = 10  # per model
    max_segment_values: int = 50  # per segment key
    series_ttl_s: int = 7 * 86400  # a model, version or segment value unseen this long frees its slot
    # (at least join_ttl + the longest window, so that all its windows are final: see core.admission)
    rules: list[Rule] = field(default_factory=list)
    detectors: list[DetectorRule] = field(default_factory=list)  # rules with a detector (no threshold)
    positive_classes: dict[str, str] = field(default_factory=dict)  # model glob -> its positive class (binary)
    custom_metrics: list[CustomMetric] = field(default_factory=list)

    def is_regression(self, model: str) -> bool:
        """Whether ``model`` matches ``regression_models`` (globs): its targets are numbers."""
        return any(fnmatch.fnmatchcase(model, pattern) for pattern in self.regression_models)
