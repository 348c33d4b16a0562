"""Input records as columns, decoded from JSON lines in one pass and checked a column at a time.

msgspec decodes each line into a typed struct (JSON types checked in C, as in ``core.wire``); its
fields are appended to columns, and what a type cannot say (lengths, names people read,
timestamps, probabilities) is checked on whole columns: once per distinct name or segment, with
numpy for numbers. A line either check refuses is left to ``core.wire`` (whose per-record path,
and then ``core.records``, give the record or the reason), so an accepted row is exactly the record
``prediction_from_json`` or ``label_from_json`` makes (``tests/unit/core/test_columns.py``).

>>> columns, refused = predictions_from_json([b'{"request_id":"r1","model":"m","timestamp":1767225600,'
...     b'"prediction":"a"}', b'{"request_id":""}'])
>>> columns.record(0).timestamp, columns.models, refused
(1767225600.0, ['m'], [1])
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from stream.core.records import (
    MAX_ID_CHARS,
    MAX_NAME_CHARS,
    MAX_RECORD_BYTES,
    MAX_SCORE_CLASSES,
    MAX_TIMESTAMP_S,
    MIN_TIMESTAMP_S,
    Label,
    Prediction,
    Scores,
    Segment,
    parse_timestamp,
)
from stream.core.stamps import epoch_seconds
from stream.core.wire import _DECODE_ERRORS, _LABELS, _PREDICTIONS, Outcome, _outcome, _Refused, _segment_of

__all__ = ["DECODED_ROWS", "LabelColumns", "PredictionColumns", "labels_from_json", "predictions_from_json"]

DECODED_ROWS = 512  # lines decoded into structs at a time, their fields taken before the next (see ``_decoded``)


@dataclass
class PredictionColumns:
    """Predictions, a row each; ``rows[i]``: where row i came from (the caller's number)."""

    rows: list[int] = field(default_factory=list)
    request_ids: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    versions: list[str] = field(default_factory=list)
    timestamps: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))
    values: list[Outcome] = field(default_factory=list)
    score_names: list[tuple[str, ...] | None] = field(default_factory=list)  # the classes scored, in record order
    # and their probabilities: those of every row scored, one row after another (as one array, not
    # a tuple a row: half the time to build, checked and counted as it is)
    score_values: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))
    segments: list[Segment] = field(default_factory=list)
    # hash() of each request id, taken while the decoder holds it (``Engine.take_settled`` numbers
    # requests by them, checked; a hash is the process's own, never kept or sent elsewhere)
    id_hashes: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.rows)

    def score_starts(self) -> npt.NDArray[np.int64]:
        """Where each row's probabilities start in ``score_values``."""
        lengths = _lengths(self.score_names)
        return np.cumsum(lengths) - lengths

    def record(self, i: int) -> Prediction:
        return self.records([i])[0]

    def records(self, at: list[int]) -> list[Prediction]:
        """The records of the rows ``at``."""
        starts = self.score_starts()[at].tolist() if at else []
        out = []
        for i, start in zip(at, starts, strict=True):
            names = self.score_names[i]
            flat: Scores | None = None
            if names is not None:
                values = self.score_values[start:start + len(names)].tolist()
                flat = tuple(itertools.chain.from_iterable(zip(names, values, strict=True)))
            out.append(Prediction(self.request_ids[i], self.models[i], self.versions[i], float(self.timestamps[i]),
                                  self.values[i], flat, self.segments[i]))
        return out

    @classmethod
    def joined(cls, parts: list[PredictionColumns]) -> PredictionColumns:
        """The rows of ``parts``, one after another."""
        return cls(*(_joined([getattr(part, name) for part in parts]) for name in _FIELDS))

    def take(self, keep: list[bool]) -> PredictionColumns:
        """The rows ``keep`` marks."""
        values = self.score_values[np.repeat(np.array(keep, dtype=bool), _lengths(self.score_names))]
        return type(self)(*(values if name == "score_values" else _taken(getattr(self, name), keep)
                            for name in _FIELDS))

    def add(self, rows: list[int], records: list[Prediction]) -> None:
        """Records decoded another way."""
        self.rows += rows
        self.request_ids += [r.request_id for r in records]
        self.models += [r.model for r in records]
        self.versions += [r.model_version for r in records]
        self.timestamps = np.concatenate([self.timestamps, [r.timestamp for r in records]])
        self.values += [r.value for r in records]
        self.score_names += [None if r.scores is None else r.scores[0::2] for r in records]  # type: ignore[misc]
        self.score_values = np.concatenate([self.score_values, np.array(
            [p for r in records if r.scores is not None for p in r.scores[1::2]], dtype=np.float64)])
        self.segments += [r.segment for r in records]
        self.id_hashes = np.concatenate([self.id_hashes, _hashes([r.request_id for r in records])])


@dataclass
class LabelColumns:
    """Labels, a row each (see ``PredictionColumns``)."""

    rows: list[int] = field(default_factory=list)
    request_ids: list[str] = field(default_factory=list)
    timestamps: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))
    values: list[Outcome] = field(default_factory=list)
    id_hashes: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.rows)

    def record(self, i: int) -> Label:
        return Label(self.request_ids[i], float(self.timestamps[i]), self.values[i])

    def records(self, at: list[int]) -> list[Label]:
        """The records of the rows ``at``."""
        return [self.record(i) for i in at]

    @classmethod
    def joined(cls, parts: list[LabelColumns]) -> LabelColumns:
        """The rows of ``parts``, one after another."""
        return cls(*(_joined([getattr(part, name) for part in parts]) for name in _LABEL_FIELDS))

    def take(self, keep: list[bool]) -> LabelColumns:
        """The rows ``keep`` marks."""
        return type(self)(*(_taken(getattr(self, name), keep) for name in _LABEL_FIELDS))

    def add(self, rows: list[int], records: list[Label]) -> None:
        """Records decoded another way."""
        self.rows += rows
        self.request_ids += [r.request_id for r in records]
        self.timestamps = np.concatenate([self.timestamps, [r.timestamp for r in records]])
        self.values += [r.value for r in records]
        self.id_hashes = np.concatenate([self.id_hashes, _hashes([r.request_id for r in records])])


def predictions_from_json(lines: list[bytes], rows: list[int] | None = None, max_bytes: int = MAX_RECORD_BYTES
                          ) -> tuple[PredictionColumns, list[int]]:
    """The predictions of ``lines`` as columns (row numbers ``rows``, else their indexes), and the
    indexes of the lines left to ``core.wire.prediction_from_json``."""
    same: dict[Any, Any] = {}
    keep = same.setdefault  # one object for each name, class, set of score classes and segment text
    models: list[str] = []
    versions: list[str] = []
    stamps: list[float | str] = []
    values: list[Outcome] = []
    names: list[tuple[str, ...] | None] = []
    flat: list[npt.NDArray[np.float64]] = []
    segments: list[bytes] = []
    read = _Read()
    for records in read.parts(lines, _PREDICTIONS.decode, max_bytes):
        models += [keep(r.model, r.model) for r in records]
        versions += [keep(r.model_version, r.model_version) for r in records]
        stamps += [r.timestamp for r in records]
        values += [keep(v, v) if type(v := r.prediction) is str else v for r in records]
        scored = [r.scores for r in records]
        names += [None if s is None else keep(c := tuple(s), c) for s in scored]
        flat.append(np.fromiter(itertools.chain.from_iterable(map(dict.values, filter(None, scored))), np.float64))
        segments += [keep(text, text) for text in map(bytes, [r.segment for r in records])]
    probabilities = np.concatenate(flat) if flat else np.zeros(0)
    ids = read.ids
    lengths = _lengths(names)
    ok = _ids_ok(ids) & _names_ok(models) & _names_ok(versions) & _scores_ok(names, probabilities, lengths)
    timestamps, ok_ts = _timestamps(stamps)
    ok &= ok_ts & _outcomes_ok(values)
    known: dict[bytes, Segment | None] = {}  # each distinct text read once (None: refused)
    for text in set(segments):
        try:
            known[text] = _segment_of(text)
        except _Refused:
            known[text] = None
    checked = list(map(known.__getitem__, segments))
    if None in known.values():
        for i in [i for i, segment in enumerate(checked) if segment is None]:
            checked[i] = ()
            ok[i] = False
    if not ok.all():
        probabilities = probabilities[np.repeat(ok, lengths)]
    pick, taken, refused = _kept(ok, read.taken, read.refused)
    return PredictionColumns([rows[i] for i in taken] if rows is not None else taken, pick(ids), pick(models),
                             pick(versions), timestamps[ok], pick(values), pick(names), probabilities,
                             pick(checked), read.id_hashes(ok)), refused


def labels_from_json(lines: list[bytes], rows: list[int] | None = None, max_bytes: int = MAX_RECORD_BYTES
                     ) -> tuple[LabelColumns, list[int]]:
    """The labels of ``lines`` as columns, and the indexes of the lines left to
    ``core.wire.label_from_json`` (see ``predictions_from_json``)."""
    stamps: list[float | str] = []
    values: list[Outcome] = []
    read = _Read()
    for records in read.parts(lines, _LABELS.decode, max_bytes):
        stamps += [r.timestamp for r in records]
        values += [r.label for r in records]
    timestamps, ok = _timestamps(stamps)
    ok &= _ids_ok(read.ids) & _outcomes_ok(values)
    pick, taken, refused = _kept(ok, read.taken, read.refused)
    return LabelColumns([rows[i] for i in taken] if rows is not None else taken, pick(read.ids), timestamps[ok],
                        pick(values), read.id_hashes(ok)), refused


class _Read:
    """What the parts of ``_decoded`` gave so far: the indexes of the lines taken and left, and the
    request ids of the records taken, with their hashes (taken while the records are at hand)."""

    def __init__(self) -> None:
        self.taken: list[int] = []
        self.refused: list[int] = []
        self.ids: list[str] = []
        self.hashes: list[npt.NDArray[np.int64]] = []

    def parts(self, lines: list[bytes], decode: Callable[[bytes], Any], max_bytes: int) -> Iterator[list[Any]]:
        """The records of each part (``_decoded``), their lines and ids noted first."""
        for taken, refused, records in _decoded(lines, decode, max_bytes):
            self.taken += taken
            self.refused += refused
            ids = [r.request_id for r in records]
            self.hashes.append(_hashes(ids))
            self.ids += ids
            yield records

    def id_hashes(self, ok: npt.NDArray[np.bool_]) -> npt.NDArray[np.int64]:
        """The hashes of the ids of the records ``ok`` keeps."""
        return _joined(self.hashes)[ok] if self.hashes else _hashes([])


def _kept(ok: npt.NDArray[np.bool_], taken: list[int], refused: list[int]
          ) -> tuple[Callable[[list[Any]], list[Any]], list[int], list[int]]:
    """The rows the checks ``ok`` keep of those decoded (``taken``): what picks them from a column,
    them, and the lines left to the per-record path (``refused`` with the others, in order)."""
    keep = ok.tolist()
    if all(keep):
        return (lambda column: column), taken, refused
    refused = sorted(refused + list(itertools.compress(taken, [not k for k in keep])))
    return (lambda column: list(itertools.compress(column, keep))), list(itertools.compress(taken, keep)), refused


def _decoded(lines: list[bytes], decode: Callable[[bytes], Any], max_bytes: int
             ) -> Iterator[tuple[list[int] | range, list[int], list[Any]]]:
    """(indexes of the lines decoded, of the others, their structs), ``DECODED_ROWS`` lines at a
    time: all of them at once when every one decodes (as nearly always), else line by line. A
    caller takes what it needs of each part's structs before the next: the structs of a few
    hundred lines stay in the processor's cache meanwhile, where those of a whole batch do not
    (decoding 300,000 predictions in parts of 512 takes 0.56 s, at once 0.92 s)."""
    for start in range(0, len(lines), DECODED_ROWS):
        part = lines[start:start + DECODED_ROWS]
        if max(map(len, part)) <= max_bytes:
            try:
                yield range(start, start + len(part)), [], list(map(decode, part))
                continue
            except _DECODE_ERRORS:
                pass
        taken, refused, records = [], [], []
        for i, line in enumerate(part, start):
            if len(line) > max_bytes:
                refused.append(i)
                continue
            try:
                records.append(decode(line))
            except _DECODE_ERRORS:
                refused.append(i)
                continue
            taken.append(i)
        yield taken, refused, records


def _hashes(ids: list[str]) -> npt.NDArray[np.int64]:
    return np.fromiter(map(hash, ids), np.int64, len(ids))


def _ids_ok(ids: list[str]) -> npt.NDArray[np.bool_]:
    lengths = np.fromiter(map(len, ids), np.int64, len(ids))
    return (lengths > 0) & (lengths <= MAX_ID_CHARS)


def _names_ok(names: list[str]) -> npt.NDArray[np.bool_]:
    """As ``core.wire._name``, once per distinct name."""
    bad = {name for name in set(names)
           if not name or len(name) > MAX_NAME_CHARS or not name.isprintable() or name.isspace()}
    if not bad:
        return np.ones(len(names), dtype=bool)
    return np.fromiter((name not in bad for name in names), bool, len(names))


def _timestamps(stamps: list[float | str]) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    """As ``core.wire._timestamp``: epoch seconds (NaN where refused), and which are taken. RFC
    3339 strings of the common forms are read a column at a time (``core.stamps``), the others one
    by one."""
    texts = np.flatnonzero(np.fromiter(map(str.__instancecheck__, stamps), bool, len(stamps)))
    if len(texts):
        chosen = [stamps[i] for i in texts.tolist()]
        numbers = stamps.copy()
        for i in texts.tolist():
            numbers[i] = math.nan
        out = np.array(numbers, dtype=np.float64)
        out[texts], handled = epoch_seconds(chosen)  # type: ignore[arg-type]
        for i in np.flatnonzero(~handled).tolist():
            out[texts[i]] = _parsed(chosen[i])  # type: ignore[arg-type]
    else:
        out = np.array(stamps, dtype=np.float64)
    return out, (out >= MIN_TIMESTAMP_S) & (out <= MAX_TIMESTAMP_S)


def _parsed(text: str) -> float:
    try:
        return parse_timestamp(text)
    except Exception:
        return float("nan")


def _outcomes_ok(values: list[Outcome]) -> npt.NDArray[np.bool_]:
    """As ``core.wire._outcome``; classes (strings) a column at a time."""
    if set(map(type, values)) <= {str}:
        lengths = np.fromiter(map(len, values), np.int64, len(values))  # type: ignore[arg-type]
        return (lengths > 0) & (lengths <= MAX_NAME_CHARS)
    return np.fromiter((_outcome_ok(value) for value in values), bool, len(values))


def _outcome_ok(value: Outcome) -> bool:
    try:
        _outcome(value)
    except _Refused:
        return False
    return True


def _scores_ok(names: list[tuple[str, ...] | None], flat: npt.NDArray[np.float64], lengths: npt.NDArray[np.int64]
               ) -> npt.NDArray[np.bool_]:
    """As ``core.wire._scores``: at least one class, at most ``MAX_SCORE_CLASSES``, none named
    empty (once per set of classes), each a probability in [0, 1] (all of them at once: ``flat``,
    ``lengths`` of them a row)."""
    bad = {classes for classes in set(names)
           if classes is not None and (not 0 < len(classes) <= MAX_SCORE_CLASSES or not all(classes))}
    ok = np.fromiter((c not in bad for c in names), bool, len(names)) if bad else np.ones(len(names), dtype=bool)
    outside = ~((flat >= 0.0) & (flat <= 1.0))  # NaN too
    if outside.any():
        holds = np.flatnonzero(lengths)
        ok[holds[np.add.reduceat(outside, np.cumsum(lengths[holds]) - lengths[holds]) > 0]] = False
    return ok


def _lengths(names: list[tuple[str, ...] | None]) -> npt.NDArray[np.int64]:
    """How many classes each row scores (0: none)."""
    return np.fromiter(map(len, [n or () for n in names]), np.int64, len(names))


def _joined(columns: list[Any]) -> Any:
    if columns and isinstance(columns[0], np.ndarray):
        return np.concatenate(columns)
    return list(itertools.chain.from_iterable(columns))


def _taken(column: Any, keep: list[bool]) -> Any:
    if isinstance(column, np.ndarray):
        return column[np.array(keep, dtype=bool)]
    return list(itertools.compress(column, keep))


_FIELDS = [f for f in PredictionColumns.__dataclass_fields__]
_LABEL_FIELDS = [f for f in LabelColumns.__dataclass_fields__]
