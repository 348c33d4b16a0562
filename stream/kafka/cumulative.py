"""Cumulative windows in the worker: summed from a tumbling window's final records.

A join partition's engine keeps only the records of windows that are not final yet (older
batches are pruned), so it cannot hold a cumulative window across restarts; the merge agent
builds it instead (see :mod:`stream.kafka.merge_agent`).

>>> [w.name for w in engine_windows([WindowSpec("tumbling", size_s=86400), WindowSpec("cumulative")])]
['tumbling_1d']
>>> [w.name for w in engine_windows([WindowSpec("cumulative")])]
['tumbling_1h']
"""

from __future__ import annotations

from stream.core.windows import WindowSpec

__all__ = ["HIDDEN_BASE", "cumulative_base", "engine_windows"]

HIDDEN_BASE = WindowSpec("tumbling", size_s=3600)  # the cumulative window's base when no tumbling one is set


def cumulative_base(windows: list[WindowSpec]) -> WindowSpec | None:
    """The tumbling window a cumulative one is summed from in the worker, if one is configured.

    A partition's engine keeps only the records of windows that are not final yet (older batches
    are pruned), so it cannot hold a cumulative window across restarts. Every pair falls in exactly
    one window of a tumbling spec, so the merge agent folds each one as it becomes final into a
    stored base, and a cumulative record is that base plus the windows still open. The smallest
    configured tumbling spec is used (its windows close soonest), else ``HIDDEN_BASE``, whose own
    records are not published."""
    if not any(w.kind == "cumulative" for w in windows):
        return None
    tumbling = [w for w in windows if w.kind == "tumbling"]
    return min(tumbling, key=lambda w: w.size_s) if tumbling else HIDDEN_BASE


def engine_windows(windows: list[WindowSpec]) -> list[WindowSpec]:
    """What each partition's engine counts: the configured windows, a cumulative one replaced by its
    base (see ``cumulative_base``)."""
    base = cumulative_base(windows)
    kept = [w for w in windows if w.kind != "cumulative"]
    return [*kept, base] if base is not None and base not in kept else kept
