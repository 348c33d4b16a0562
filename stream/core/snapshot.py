"""Rolling windows across a Kafka worker's rebuild: their pairs outlive the stored batches they
came from (those are pruned once their timed windows are final), so the worker stores them whole.

>>> from stream.core.records import parse_label, parse_prediction
>>> from stream.core.settings import Settings
>>> from stream.core.windows import WindowSpec
>>> engine = Engine(Settings(windows=[WindowSpec.parse("rolling 2")]))
>>> for i in range(3):
...     ts = 1.7e9 + i
...     engine.receive(parse_prediction({"request_id": str(i), "model": "m", "timestamp": ts, "prediction": "a"}))
...     engine.receive(parse_label({"request_id": str(i), "timestamp": ts, "label": "a"}))
>>> snapshot = rolling_snapshot(engine)
>>> snapshot[0][:4], [pair[:2] for pair in snapshot[0][4]]
(['m', 'unknown', [], 'rolling_2'], [[1700000001.0, '1'], [1700000002.0, '2']])
>>> fresh = Engine(engine.config)
>>> restore_rolling(fresh, snapshot)
>>> rolling_snapshot(fresh) == snapshot
True
"""

from __future__ import annotations

from typing import Any

from stream.core.engine import Engine
from stream.core.errors import InvalidRecord

__all__ = ["restore_rolling", "rolling_snapshot"]


def rolling_snapshot(engine: Engine) -> list[list[Any]]:
    """Every rolling window's pairs: [model, version, segment pairs, window name, pairs]."""
    return [[series.model, series.model_version, sorted(series.segment.items()), rolling.spec.name,
             rolling.export_pairs()]
            for series in engine._series.values() for rolling in series.rolling if rolling.pairs]


def restore_rolling(engine: Engine, snapshot: list[list[Any]]) -> None:
    """Push a snapshot's pairs back (before or after records are fed again: a pair counts once)."""
    for model_name, version, segment, name, pairs in snapshot:
        try:
            model = engine.models.get(model_name) or engine._model(model_name, max((p[0] for p in pairs), default=0))
            if model is None:
                continue
            series = engine._series_of(model, version, tuple((k, v) for k, v in segment))
            rolling = next(r for r in series.rolling if r.spec.name == name)
            for done_ts, rid, truth, guess, log_loss, brier, *scored in pairs:
                if model.classes is not None:
                    truth, guess = engine._class_id(model, truth), engine._class_id(model, guess)
                terms = None if log_loss is None else (log_loss, brier, scored[0] if scored and scored[0] else {})
                rolling.push(done_ts, rid, truth, guess, terms)
        except (InvalidRecord, StopIteration):  # a model refused now, or a window no longer configured
            continue
