"""Where each live row of a cache is, found by path, without one Python object per row.

A writer of a 1M-row cache answers "is this path in the cache, and where" for every file
a walk finds. A dict of path -> Row cost ~425 B a row here (the path string, the Row and
its ints, the dict slot; benchmarks/results/cache_scale_1m_amd-epyc-2c.md). This index
keeps, per row, two hashes of the path: Python's 64-bit string hash and a CRC-32 of its
bytes, independent of each other, so a false match needs both to collide (about 1e-17
for a million rows); its segment and its row in that segment. That is 20 B a row in
numpy arrays sorted by hash, plus a dict for the rows added since the last ``merge``
(bounded by what one commit adds). The stat columns of the rows a writer opened with are
kept beside them (32 B a row) for the re-run's diff; rows added later do not need them.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

UNKNOWN = np.iinfo(np.int64).min  # ctime_ns / ino of rows written before simx recorded them


def path_keys(paths: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The (hash, crc) of each path: int64 and uint32 arrays."""
    n = len(paths)
    h = np.fromiter((hash(p) for p in paths), np.int64, n)
    c = np.fromiter((zlib.crc32(p.encode("utf-8", "surrogatepass")) for p in paths), np.uint32, n)
    return h, c


class PathIndex:
    """Live rows by path: (hash, crc) -> (segment, row), with tombstones.

    ``merged`` arrays are sorted by (hash, crc); ``_fresh`` holds rows added since the
    last ``merge``. A removed merged row is marked dead, not deleted (``merge`` drops it).
    """

    def __init__(self) -> None:
        self.h = np.zeros(0, np.int64)
        self.c = np.zeros(0, np.uint32)
        self.seg = np.zeros(0, np.int32)
        self.loc = np.zeros(0, np.int64)
        self.alive = np.zeros(0, bool)
        self.stats: dict[str, np.ndarray] | None = None  # aligned with the merged arrays
        self._fresh: dict[tuple[int, int], tuple[int, int]] = {}
        self._live = 0

    @classmethod
    def build(cls, h: np.ndarray, c: np.ndarray, seg: np.ndarray, loc: np.ndarray,
              stats: dict[str, np.ndarray] | None = None) -> PathIndex:
        """An index over rows given column-wise; duplicate paths raise ValueError."""
        out = cls()
        order = np.lexsort((c, h))
        # One column at a time, so that a caller who hands its arrays over (and drops its
        # references) peaks at one extra column, not a second copy of everything.
        out.h = h[order]
        del h
        out.c = c[order]
        del c
        same = (out.h[1:] == out.h[:-1]) & (out.c[1:] == out.c[:-1])
        if same.any():
            raise ValueError(f"row {int(order[1:][same][0])} repeats the path of another live row")
        del same
        out.seg = seg[order].astype(np.int32, copy=False)
        out.loc = loc[order].astype(np.int64, copy=False)
        out.alive = np.ones(len(order), bool)
        if stats is not None:
            out.stats = {}
            for k in list(stats):
                out.stats[k] = stats.pop(k)[order]
        out._live = len(order)
        return out

    def __len__(self) -> int:
        return self._live

    @property
    def fresh(self) -> int:
        """Rows added since the last merge."""
        return len(self._fresh)

    def find(self, h: np.ndarray, c: np.ndarray) -> np.ndarray:
        """Positions in the merged arrays of each (hash, crc), -1 where absent or dead.
        Rows added since the last merge are not searched (call ``merge`` first)."""
        pos = np.searchsorted(self.h, h, side="left")
        out = np.full(len(h), -1, np.int64)
        n = len(self.h)
        # Equal hashes are adjacent: walk forward for the crc (a 64-bit hash collision).
        todo = np.flatnonzero(pos < n)
        p = pos[todo]
        while len(todo):
            hit = (self.h[p] == h[todo]) & (self.c[p] == c[todo])
            out[todo[hit]] = p[hit]
            more = ~hit & (self.h[p] == h[todo]) & (p + 1 < n)
            todo, p = todo[more], p[more] + 1
        found = out >= 0
        out[found] = np.where(self.alive[out[found]], out[found], -1)
        return out

    def add(self, key: tuple[int, int], seg: int, loc: int) -> None:
        """A new live row (the caller has removed any old row of the same path)."""
        self._fresh[key] = (seg, loc)
        self._live += 1

    def remove(self, key: tuple[int, int]) -> tuple[int, int] | None:
        """Drop the live row with this key; its (segment, row), or None if there was none."""
        if key in self._fresh:
            self._live -= 1
            return self._fresh.pop(key)
        p = int(self.find(np.array([key[0]], np.int64), np.array([key[1]], np.uint32))[0])
        return None if p < 0 else self.kill(np.array([p]))[0]

    def kill(self, positions: np.ndarray) -> list[tuple[int, int]]:
        """Mark merged positions dead; their (segment, row) pairs."""
        positions = positions[self.alive[positions]]
        self.alive[positions] = False
        self._live -= len(positions)
        return list(zip(self.seg[positions].tolist(), self.loc[positions].tolist()))

    def merge(self) -> None:
        """Fold the fresh rows into the sorted arrays and drop the dead ones."""
        if not self._fresh and self.alive.all():
            return
        keep = self.alive
        keys = np.array(list(self._fresh), np.int64).reshape(-1, 2)
        vals = np.array(list(self._fresh.values()), np.int64).reshape(-1, 2)
        h = np.concatenate([self.h[keep], keys[:, 0]])
        c = np.concatenate([self.c[keep], keys[:, 1].astype(np.uint32)])
        seg = np.concatenate([self.seg[keep], vals[:, 0].astype(np.int32)])
        loc = np.concatenate([self.loc[keep], vals[:, 1]])
        stats = None
        if self.stats is not None:  # rows added by this writer are never diffed against
            stats = {k: np.concatenate([v[keep], np.full(len(keys), UNKNOWN, np.int64)])
                     for k, v in self.stats.items()}
        merged = PathIndex.build(h, c, seg, loc, stats)
        self.__dict__.update(merged.__dict__)

    def live_positions(self) -> np.ndarray:
        return np.flatnonzero(self.alive)
