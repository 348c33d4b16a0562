"""What the join keeps per request: the keys of its slots and the form of a pair.

>>> slot = pair(b"prediction", (5.0, "cat"))
>>> is_pair(slot), slot[2:]
(True, (5.0, 'cat'))
"""

from __future__ import annotations

import sys
from typing import Any

from stream.core.ids import Key

__all__ = ["PAIRED", "TOMB_EXPIRED", "TOMB_JOINED", "TOMB_ORPHANED", "Entry", "PKey", "Pair", "is_pair", "pair"]

PKey = Key | tuple[Key, int]  # a prediction's: its request's key (model 0), or (key, model)
Entry = Any  # the caller's payload: (timestamp, ...), or what ``prediction_ts`` reads

PAIRED = "\x00paired"  # the first item of a pair's slot (identity tells it from any entry)
Pair = tuple[str, Entry, float, Any]  # (PAIRED, the prediction, the label's time, the label's value)

# Tombstones: a resolved id's slot, an int that says what its next record means: it paired (any
# label is a duplicate), its prediction expired, or its label was orphaned.
TOMB_JOINED, TOMB_EXPIRED, TOMB_ORPHANED = 0, 1, 2


def is_pair(slot: Any) -> bool:
    """Whether an ``ids`` slot holds a pair: a prediction that paired, with its label's time and
    value (not its provenance), kept until the later of their timestamps plus the TTL, so that a
    label or prediction that wins over it revises it and another model's prediction pairs with its
    label. A plain tuple of atomic items: the garbage collector stops tracking it (one per joined
    request, for a TTL, would otherwise make every collection longer)."""
    return type(slot) is tuple and slot[0] is PAIRED


def pair(prediction: Entry, label: Entry) -> Pair:
    value = label[1]
    return PAIRED, prediction, label[0], sys.intern(value) if type(value) is str else value  # classes repeat
