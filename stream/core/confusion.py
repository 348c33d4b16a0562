"""Incremental confusion matrices: one matrix feeds every classification metric (river's design).

Rows are actual classes, columns predicted ones. Counts live in one numpy array per matrix,
grown when a new class appears, so a cell is never a Python object.

>>> cm = ConfusionMatrix()
>>> for truth, guess in [("cat", "cat"), ("dog", "cat"), ("dog", "dog")]:
...     cm.update(truth, guess)
>>> cm.classes(), cm.counts().tolist()
(['cat', 'dog'], [[1, 0], [1, 1]])
>>> cm.revert("dog", "cat")
>>> cm.counts().tolist()
[[1, 0], [0, 1]]
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["CODE_BITS", "CODE_MASK", "ClassIndex", "ConfusionMatrix", "Counts", "count_codes"]

Counts = npt.NDArray[np.int64]
CODE_BITS = 20
CODE_MASK = (1 << CODE_BITS) - 1
SMALL_TABLE = 4  # classes up to which ``table`` finds the present ones in plain Python


def count_codes(codes: npt.NDArray[np.int64], size: int) -> Counts:
    """A size x size matrix of a batch of pair codes ``(true_id << CODE_BITS) | pred_id`` (one int
    per pair, so a batch is one flat int64 array; classes < 2**20), in one numpy pass."""
    flat = (codes >> CODE_BITS) * size + (codes & CODE_MASK)
    return np.bincount(flat, minlength=size * size).reshape(size, size).astype(np.int64)


class ClassIndex:
    """Class names to dense indices, shared by all matrices of one model so lookups happen once."""

    __slots__ = ("ids", "names")

    def __init__(self) -> None:
        self.names: list[str] = []
        self.ids: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.names)

    def id(self, name: str) -> int:
        found = self.ids.get(name)
        if found is None:
            found = self.ids[name] = len(self.names)
            self.names.append(name)
        return found


class ConfusionMatrix:
    __slots__ = ("_cells", "index", "total")

    def __init__(self, index: ClassIndex | None = None) -> None:
        self.index = index if index is not None else ClassIndex()
        self._cells: Counts = np.zeros((0, 0), dtype=np.int64)
        self.total = 0

    def update(self, y_true: str, y_pred: str, weight: int = 1) -> None:
        self.add(self.index.id(y_true), self.index.id(y_pred), weight)

    def revert(self, y_true: str, y_pred: str) -> None:
        self.update(y_true, y_pred, -1)

    def add(self, true_id: int, pred_id: int, weight: int = 1) -> None:
        """Fast path for callers that already hold class indices."""
        size = self._cells.shape[0]
        if true_id >= size or pred_id >= size:
            self._grow(len(self.index))
        self._cells[true_id, pred_id] += weight
        self.total += weight

    def merge(self, other: Counts, total: int) -> None:
        """Add another matrix's cells (over the same class index)."""
        size = other.shape[0]
        self._grow(size)
        self._cells[:size, :size] += other
        self.total += total

    def _grow(self, size: int) -> None:
        if size > self._cells.shape[0]:
            grown = np.zeros((size, size), dtype=np.int64)
            old = self._cells.shape[0]
            grown[:old, :old] = self._cells
            self._cells = grown

    def present(self) -> npt.NDArray[np.intp]:
        """Indices of classes seen as an actual or a predicted value (scikit-learn's default labels)."""
        cells = self._cells
        return np.flatnonzero(cells.sum(axis=0) + cells.sum(axis=1))

    def classes(self) -> list[str]:
        """Present classes, sorted like scikit-learn sorts string labels."""
        names = self.index.names
        return sorted(names[i] for i in self.present())

    def counts(self) -> Counts:
        """The matrix over :meth:`classes`, in that order."""
        return self.table()[1]

    def table(self) -> tuple[list[str], Counts]:
        """:meth:`classes` and :meth:`counts` at once."""
        names, cells = self.index.names, self._cells
        size = len(cells)
        if size <= SMALL_TABLE:  # a few classes: plain Python costs less than numpy's calls
            rows = cells.tolist()
            present = [i for i in range(size) if any(rows[i]) or any(row[i] for row in rows)]
        else:
            present = self.present().tolist()
        order = sorted(present, key=names.__getitem__)
        if order == list(range(size)):
            return [names[i] for i in order], cells.copy()
        return [names[i] for i in order], cells[np.ix_(order, order)]
