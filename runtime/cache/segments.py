"""SegmentedEmbeddings: the live rows of several segments' memmaps as one read-only array."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np


class SegmentedEmbeddings:
    """The live rows of several segments as one read-only array-like [N, D].

    Indexing (an int, a slice, an int or bool array) gathers from the per-segment memmaps;
    ``np.asarray`` concatenates. A compacted cache needs none of this: its ``embeddings``
    is the single segment's memmap.
    """

    def __init__(self, parts: list[np.ndarray], keeps: list[np.ndarray | None], dim: int) -> None:
        self._parts = parts
        self._keeps = keeps
        counts = [len(p) if k is None else len(k) for p, k in zip(parts, keeps)]
        self._starts = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
        self.shape = (int(self._starts[-1]), int(dim))
        self.dtype = np.dtype(np.float32)
        self.ndim = 2

    @property
    def size(self) -> int:
        return self.shape[0] * self.shape[1]

    def __len__(self) -> int:
        return self.shape[0]

    def _gather(self, idx: np.ndarray) -> np.ndarray:
        out = np.empty((len(idx), self.shape[1]), np.float32)
        seg = np.searchsorted(self._starts, idx, side="right") - 1
        for j in np.unique(seg):
            m = seg == j
            local = idx[m] - self._starts[j]
            keep = self._keeps[j]
            out[m] = self._parts[j][local if keep is None else keep[local]]
        return out

    def __getitem__(self, key: Any) -> np.ndarray:
        rest: tuple = ()
        if isinstance(key, tuple):
            key, rest = key[0], key[1:]
        n = self.shape[0]
        if isinstance(key, (int, np.integer)):
            i = int(key) + (n if key < 0 else 0)
            if not 0 <= i < n:
                raise IndexError(f"row {key} is out of range for {n} rows")
            out = self._gather(np.array([i], np.int64))[0]
        elif isinstance(key, slice):
            out = self._gather(np.arange(n, dtype=np.int64)[key])
        else:
            a = np.asarray(key)
            if a.dtype == bool:
                if a.shape != (n,):
                    raise IndexError(f"a boolean index of shape {a.shape} for {n} rows")
                a = np.flatnonzero(a)
            a = a.astype(np.int64)
            a = np.where(a < 0, a + n, a)
            if a.size and (a.min() < 0 or a.max() >= n):
                raise IndexError(f"a row index is out of range for {n} rows")
            out = self._gather(a.ravel()).reshape(*a.shape, self.shape[1])
        return out[(Ellipsis, *rest)] if rest else out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = np.concatenate([p if k is None else p[k] for p, k in zip(self._parts, self._keeps)]
                             or [np.zeros((0, self.shape[1]), np.float32)])
        return out if dtype is None else out.astype(dtype, copy=False)

    def __iter__(self) -> Iterable[np.ndarray]:
        for i in range(self.shape[0]):
            yield self[i]

    def __repr__(self) -> str:
        return f"SegmentedEmbeddings(shape={self.shape}, segments={len(self._parts)})"
