"""Pending predictions, each packed into one ``bytes`` object: a prediction waiting for its label
costs memory for as long as the label takes (hours, days), so the engine keeps millions of them.

>>> codec = PendingCodec()
>>> entry = codec.pack(1_767_225_600.0, 7, False, 1, ("a", 0.25, "b", 0.75))
>>> len(entry), pending_ts(entry)
(31, 1767225600.0)
>>> codec.unpack(entry)
(1767225600.0, 7, 1, ('a', 'b'), (0.25, 0.75))
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import orjson

from stream.core.records import Scores

__all__ = ["INLINE_SCORES", "MAX_LAYOUTS", "NO_SCORES", "PendingCodec", "PendingLabel",
           "PendingPrediction", "pending_label", "pending_ts"]

# A pending prediction is packed into one bytes object (64 bytes of memory for a binary classifier
# with scores, where a tuple of its fields took 250): its timestamp, the number of its
# window set, its class id (0 for a regression model) and a layout byte, then doubles: a regression
# model's target, or a classifier's probabilities. A layout is the tuple of class names the scores
# came with, kept once per engine; past MAX_LAYOUTS of them, the count and the names (JSON) come
# inline after the probabilities.
PendingPrediction = bytes
PendingLabel = tuple[Any, ...]  # (timestamp, label), and where it came from when the adapter said


def pending_label(ts: float, value: Any, where: dict[str, Any] | None) -> PendingLabel:
    """A label as the join keeps it: its time and value, and where it came from when known (for
    its dead letter, should a model it pairs with refuse it)."""
    return (ts, value, where) if where else (ts, value)


_HEAD = struct.Struct("<dIHB")  # timestamp, window-set number, class id, layout
_HEAD_DTYPE = np.dtype([("ts", "<f8"), ("number", "<u4"), ("guess", "<u2"), ("layout", "u1")])  # the same
_INLINE = struct.Struct("<dIHBH")  # + the number of scores whose names come inline
NO_SCORES, INLINE_SCORES, REGRESSION = 255, 254, 253
MAX_LAYOUTS = 253
_PACKERS: dict[int, struct.Struct] = {}


def _packer(doubles: int) -> struct.Struct:
    """The head and ``doubles`` doubles."""
    packer = _PACKERS.get(doubles)
    if packer is None:
        packer = _PACKERS[doubles] = struct.Struct(f"<dIHB{doubles}d")
    return packer


_TIMESTAMP = struct.Struct("<d").unpack_from


def pending_ts(entry: PendingPrediction) -> float:
    return _TIMESTAMP(entry)[0]  # type: ignore[no-any-return]


class PendingCodec:
    """Packs and unpacks pending predictions; keeps the score layouts (tuples of class names)."""

    def __init__(self) -> None:
        self._layouts: dict[tuple[Any, ...], int] = {}
        self._layout_names: list[tuple[str, ...]] = []

    def pack(self, ts: float, number: int, regression: bool, value: Any, scores: Scores | None) -> PendingPrediction:
        """One pending prediction: its timestamp, window-set number, class id (or a regression
        model's target, ``value``) and scores."""
        if regression:
            return _packer(1).pack(ts, number, 0, REGRESSION, value)  # a regression model's scores are not used
        if scores is None:
            return _HEAD.pack(ts, number, value, NO_SCORES)
        names, probs = scores[0::2], scores[1::2]
        layout = self._layouts.get(names)
        if layout is None:
            if len(self._layout_names) >= MAX_LAYOUTS:
                return self._pack_inline(ts, number, value, names, probs)
            layout = self._layouts[names] = len(self._layout_names)
            self._layout_names.append(names)  # type: ignore[arg-type]
        return _packer(len(probs)).pack(ts, number, value, layout, *probs)

    @staticmethod
    def _pack_inline(ts: float, number: int, value: Any, names: tuple[Any, ...], probs: tuple[Any, ...]) -> bytes:
        return (_INLINE.pack(ts, number, value, INLINE_SCORES, len(probs)) + struct.pack(f"<{len(probs)}d", *probs)
                + orjson.dumps(names))

    def layout(self, number: int) -> tuple[str, ...]:
        """The score names of a layout number (the byte ``unpack_heads`` gives)."""
        return self._layout_names[number]

    @staticmethod
    def unpack_heads(entries: list[PendingPrediction]) -> np.ndarray:
        """The heads of entries of any sizes as one structured array (fields ``ts``, ``number``,
        ``guess``, ``layout``)."""
        size = _HEAD.size
        return np.frombuffer(b"".join([entry[:size] for entry in entries]), dtype=_HEAD_DTYPE)

    @staticmethod
    def probabilities(entries: list[PendingPrediction], width: int) -> np.ndarray:
        """The probabilities of entries of ``width`` scores each whose names a layout gives (none
        inline), a row each."""
        size = _HEAD.size
        return np.frombuffer(b"".join([entry[size:] for entry in entries]), dtype="<f8").reshape(len(entries), width)

    def unpack(self, entry: PendingPrediction) -> tuple[float, int, Any, tuple[Any, ...] | None, tuple[float, ...]]:
        """(timestamp, window-set number, guess, score names or None, probabilities)."""
        if entry[14] == INLINE_SCORES:
            ts, number, guess, _, count = _INLINE.unpack_from(entry)
            probs = struct.unpack_from(f"<{count}d", entry, _INLINE.size)
            names = tuple(orjson.loads(entry[_INLINE.size + 8 * count:]))
            return ts, number, guess, names, probs
        ts, number, guess, layout, *doubles = _packer((len(entry) - _HEAD.size) >> 3).unpack(entry)
        if layout == REGRESSION:
            return ts, number, doubles[0], None, ()
        if layout == NO_SCORES:
            return ts, number, guess, None, ()
        return ts, number, guess, self._layout_names[layout], tuple(doubles)
