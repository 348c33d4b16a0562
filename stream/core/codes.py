"""``np.unique`` of small non-negative integers (codes: row numbers, ids, cells) in linear time.

``np.unique`` sorts, O(n log n); codes bounded by a few times their count can be found by marking
them in a table instead, O(n), with the same answer: the distinct values in ascending order and,
as asked, each one's first index and each value's position among them. Values too spread out for
a table go to ``np.unique`` itself.

>>> found, first, inverse = unique_ints(np.array([5, 2, 5, 0]), return_index=True, return_inverse=True)
>>> found.tolist(), first.tolist(), inverse.tolist()
([0, 2, 5], [3, 1, 0], [2, 1, 2, 0])
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["unique_ints"]

_SPREAD = 4  # a table up to this many entries per value (and 1,024 at least) is cheaper than a sort


def unique_ints(values: npt.NDArray[np.int64], return_index: bool = False, return_inverse: bool = False
                ) -> Any:
    """As ``np.unique(values, return_index=..., return_inverse=...)`` for a 1-d integer array
    (the inverse 1-d, int64)."""
    n = len(values)
    top = int(values.max()) + 1 if n else 0
    if n and (int(values.min()) < 0 or top > max(_SPREAD * n, 1024)):
        sorted_out: Any = np.unique(values, return_index=return_index, return_inverse=return_inverse)  # type: ignore[call-overload]
        if return_inverse:
            return (*sorted_out[:-1], sorted_out[-1].reshape(-1).astype(np.int64))
        return sorted_out
    present = np.zeros(top, dtype=bool)
    present[values] = True
    found = np.flatnonzero(present).astype(values.dtype)
    if not (return_index or return_inverse):
        return found
    out: list[npt.NDArray[Any]] = [found]
    if return_index:
        first = np.full(top, n, dtype=np.int64)
        np.minimum.at(first, values, np.arange(n, dtype=np.int64))
        out.append(first[found])
    if return_inverse:
        rank = np.cumsum(present, dtype=np.int64) - 1
        out.append(rank[values])
    return tuple(out)
