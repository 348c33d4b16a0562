"""The join agent's stored batches read back: their records in the order the engine took them in
(``stored_in_order``). Their keys and stored forms are in :mod:`stream.kafka.formats`.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator

import msgspec
import numpy as np

from stream.core.errors import InvalidRecord
from stream.core.records import Label, Prediction
from stream.core.wire import label_from_json, prediction_from_json, timestamp_from_json
from stream.kafka.formats import read_batch

__all__ = ["stored_in_order"]


_DECODERS = (prediction_from_json, label_from_json)
_ANY_SIZE = sys.maxsize  # stored records were taken in: a smaller max_record_bytes since refuses none


def stored_in_order(values: list[bytes], chunk: int) -> tuple[list[float], Iterator[list[Prediction | Label]]]:
    """The records of stored batches in (timestamp, kind) order, stored order among equals (as the
    engine took them in), ``chunk`` at a time; and each batch's latest timestamp (-inf if empty).

    Only the timestamps are decoded at first; a record is decoded when its chunk comes, and the
    JSON of each batch is let go once all its records are. So a rebuild holds one chunk of record
    objects at a time: objects that come and go in a long rebuild, between the pending entries
    that stay, left holes that kept 250-270 bytes of RSS per pending prediction instead of about 200.
    """
    raws: list[msgspec.Raw | None] = []
    kinds: list[int] = []
    stamps: list[float] = []
    latest: list[float] = []
    for value in values:
        batch = read_batch(value)
        last = -math.inf
        for kind, part in ((0, batch.predictions), (1, batch.labels)):
            for raw in part:
                ts = _stamp(raw, kind)
                raws.append(raw)
                kinds.append(kind)
                stamps.append(ts)
                last = max(last, ts)
        latest.append(last)
    order = np.lexsort((np.array(kinds, dtype=np.int8), np.array(stamps, dtype=np.float64))).tolist()  # stable

    def chunks() -> Iterator[list[Prediction | Label]]:
        for start in range(0, len(order), chunk):
            records: list[Prediction | Label] = []
            for i in order[start:start + chunk]:
                records.append(_DECODERS[kinds[i]](bytes(raws[i]), _ANY_SIZE))
                raws[i] = None
            yield records

    return latest, chunks()


def _stamp(raw: msgspec.Raw, kind: int) -> float:
    """A stored record's timestamp, as decoding it whole gives it."""
    try:
        return timestamp_from_json(raw)
    except InvalidRecord:  # a form only the whole decode takes (the dict path's)
        return _DECODERS[kind](bytes(raw), _ANY_SIZE).timestamp
