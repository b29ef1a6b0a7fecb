"""Reading a cache: one consistent committed state (``read_state``), without the lock, and
``FeatureCache``, the read API over it.

A writer may commit while we read. Every commit replaces ``cache.json`` by rename, so a
read that saw ``cache.json`` change under it (another inode, size or mtime) is read again;
files that disagree although nothing changed are damage.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from simx.cache.format import (
    FORMAT,
    FORMAT_VERSION,
    META,
    CacheError,
    Failure,
    Row,
    canonical_path,
    damaged,
    emb_path,
    failure_from,
    format_1,
    meta_path,
    require_regular,
    segments_of,
)
from simx.cache.segments import SegmentedEmbeddings
from simx.cache.tables import (
    CHUNK,
    concat,
    iter_rows_parquet,
    read_rows_parquet,
    rows_table,
    table_keys,
    table_paths,
    table_rows,
    table_stats,
)
from simx.core.fs import STAT_FIELDS, file_version

# How long a reader keeps re-reading while commits overlap it (a commit takes
# milliseconds, and writers commit every 30 s).
RACE_TIMEOUT = 10.0


@dataclass
class CacheState:
    """One committed state of a cache folder."""

    meta: dict[str, Any]
    table: Any  # the live rows' metadata: a pyarrow Table in ROW_COLUMNS (None: no rows)
    failures: list[Failure]
    embeddings: Any  # read-only [N, D]: a memmap, or SegmentedEmbeddings over several
    identity: tuple = ()  # cache.json's file_version and the manifest's hash: new at every commit
    # Where each live row is stored: segment id and row in it.
    seg: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    loc: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    # path_keys of the live rows (this process's hash; read_state checks that no path has
    # two live rows) and their stat columns (table_stats), whether or not table is kept.
    keys: tuple[np.ndarray, np.ndarray] = (np.zeros(0, np.int64), np.zeros(0, np.uint32))
    stats: dict[str, np.ndarray] | None = None
    n: int | None = None  # live rows (when table is not kept)

    @property
    def count(self) -> int:
        if self.n is not None:
            return self.n
        return 0 if self.table is None else self.table.num_rows


class _Raced(Exception):
    """A commit happened while we read; read again."""


def read_state(d: str | os.PathLike[str], table: bool = True) -> CacheState:
    """Read a consistent committed state without taking the lock.

    A commit that overlaps the read is read again, for up to RACE_TIMEOUT seconds.
    ``table=False`` (a writer) keeps the rows' keys and stats but not their table.
    """
    d = Path(d)
    if not d.is_dir():
        raise CacheError(f"no simx feature cache at {d} (not a folder)")
    deadline = time.monotonic() + RACE_TIMEOUT
    while True:
        try:
            s = _read_once(d, table)
        except _Raced:  # a commit overlapped the read
            if time.monotonic() > deadline:
                raise CacheError(f"{d}: could not read a stable state for {RACE_TIMEOUT:g} s "
                                 "(a writer commits continuously?)") from None
            time.sleep(0.01)
            continue
        _check_unique(s, d / META)
        return s


def _read_once(d: Path, table: bool = True) -> CacheState:
    """One read; a commit that replaced cache.json meanwhile is a race."""
    where = d / META
    before = file_version(where)
    try:
        require_regular(where)
        raw = where.read_bytes()
        state = _parse(d, raw, table)
    except CacheError:
        if file_version(where) != before:
            raise _Raced() from None
        raise
    except (OSError, ValueError, KeyError, TypeError, AttributeError, EOFError, IndexError) as e:
        if file_version(where) != before:
            raise _Raced() from None  # a compaction removed a segment we were opening
        if isinstance(e, FileNotFoundError) and not where.exists():
            raise CacheError(f"{d} is not a simx feature cache (no {META})") from None
        raise damaged(d, f"{type(e).__name__}: {e}") from None
    if file_version(where) != before:
        raise _Raced()
    state.identity = (before, ("manifest", hashlib.sha256(raw).hexdigest()))
    return state


def _parse_meta(d: Path, raw: bytes) -> dict[str, Any]:
    """cache.json, checked for the fields every reader relies on."""
    where = d / META
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError:
        raise damaged(where, "not valid JSON") from None
    if not isinstance(meta, dict):
        raise damaged(where, f"a JSON {type(meta).__name__}, not an object")
    if meta.get("format") != FORMAT:
        raise CacheError(f"{d}: {META} is not a simx feature cache (format {meta.get('format')!r})")
    version = meta.get("format_version", 1)  # format 1's first writers did not record it
    if not isinstance(version, int) or isinstance(version, bool):
        raise damaged(where, f"format_version is {version!r}, not a number")
    if version > FORMAT_VERSION:
        raise CacheError(f"{d}: cache format {version} is newer than this simx; upgrade")
    if version < 2:
        raise format_1(d)
    for key in ("count", "dim"):
        if not isinstance(meta.get(key), int) or isinstance(meta.get(key), bool) or meta[key] < 0:
            raise damaged(where, f"{key} is {meta.get(key)!r}, not a count")
    fails = meta.get("failures", [])
    if not isinstance(fails, list) or any(not isinstance(f, dict) for f in fails):
        raise damaged(where, "failures is not a list of objects")
    return meta


def _open_segment(d: Path, s: dict[str, Any], dim: int) -> tuple[np.ndarray, np.ndarray | None]:
    """A segment's rows as a memmap, and its live rows (None: all of them)."""
    ep = emb_path(d, s["id"])
    require_regular(ep)
    emb = np.load(ep, mmap_mode="r", allow_pickle=False)
    if not isinstance(emb, np.ndarray) or emb.dtype != np.float32 or emb.ndim != 2:
        raise damaged(ep, "not one float32 [n, D] .npy array")
    if emb.shape != (s["rows"], dim):
        raise damaged(ep, f"shape {emb.shape}, the manifest says ({s['rows']}, {dim})")
    if not s["dead"]:
        return emb, None
    live = np.ones(s["rows"], bool)
    live[s["dead"]] = False
    return emb, np.flatnonzero(live)


def segment_rows(mp: Path, keep: np.ndarray | None, table: bool) -> tuple[Any, int, tuple, dict]:
    """One segment's metadata: (its live rows' table or None, rows stored, keys, stats),
    read a row group batch at a time so that only ``table=True`` holds every row."""
    parts, keys, stats, n = [], [], [], 0
    for t in iter_rows_parquet(mp):
        n += t.num_rows
        keys.append(table_keys(t))
        stats.append(table_stats(t))
        if table:
            parts.append(t)
    h = np.concatenate([k[0] for k in keys]) if keys else np.zeros(0, np.int64)
    c = np.concatenate([k[1] for k in keys]) if keys else np.zeros(0, np.uint32)
    st = {f: np.concatenate([x[f] for x in stats]) if stats else np.zeros(0, np.int64)
          for f in STAT_FIELDS}
    t = (concat(parts) or rows_table([])) if table else None
    if keep is not None and (not len(keep) or keep[-1] < n):  # else damage: the caller says
        h, c = h[keep], c[keep]
        st = {f: v[keep] for f, v in st.items()}
        t = None if t is None else t.take(keep)
    return t, n, (h, c), st


def _parse(d: Path, raw: bytes, table: bool = True) -> CacheState:
    meta = _parse_meta(d, raw)
    dim = meta["dim"]
    parts, keeps, tables, segs, locs, keys, stats = [], [], [], [], [], [], []
    for s in segments_of(d / META, meta):
        emb, keep = _open_segment(d, s, dim)
        mp = meta_path(d, s["id"])
        seg_rows, stored, seg_keys, seg_stats = segment_rows(mp, keep, table)
        if stored != s["rows"]:
            raise damaged(mp, f"{stored} rows, the manifest says {s['rows']}")
        locs.append(np.arange(s["rows"], dtype=np.int64) if keep is None else keep.astype(np.int64))
        tables.append(seg_rows)
        keys.append(seg_keys)
        stats.append(seg_stats)
        segs.append(np.full(len(locs[-1]), s["id"], np.int32))
        parts.append(emb)
        keeps.append(keep)
    n = sum(len(x) for x in locs)
    if n != meta["count"]:
        raise damaged(d / META, f"{n} live rows, the manifest says {meta['count']}")
    state = CacheState(meta, concat(tables) if table else None,
                       [failure_from(f) for f in meta.get("failures", [])],
                       _embeddings(parts, keeps, dim), n=n,
                       seg=np.concatenate(segs) if segs else np.zeros(0, np.int32),
                       loc=np.concatenate(locs) if locs else np.zeros(0, np.int64))
    if keys:
        state.keys = (np.concatenate([k[0] for k in keys]), np.concatenate([k[1] for k in keys]))
        state.stats = {f: np.concatenate([x[f] for x in stats]) for f in stats[0]}
    return state


def _embeddings(parts: list[np.ndarray], keeps: list[np.ndarray | None], dim: int) -> Any:
    if len(parts) == 1 and keeps[0] is None:
        return parts[0]  # a compacted cache is one array
    if not parts:
        return np.zeros((0, dim), np.float32)
    return SegmentedEmbeddings(parts, keeps, dim)


def _check_unique(s: CacheState, where: Path) -> None:
    """Two live rows of one path would make ``row()`` ambiguous: damage."""
    h, c = s.keys
    order = np.lexsort((c, h))
    same = np.flatnonzero((h[order][1:] == h[order][:-1]) & (c[order][1:] == c[order][:-1]))
    for k in same:  # equal keys: the same path, short of a 96-bit hash collision
        a, b = (_path_of(where.parent, s, int(i)) for i in order[k:k + 2])
        if a == b:
            raise damaged(where, f"{a!r} is duplicated: two live rows")


def _path_of(d: Path, s: CacheState, i: int) -> str:
    """The path of live row ``i`` (from the table, or read from its segment)."""
    if s.table is not None:
        return table_paths(s.table, i, i + 1)[0]
    return table_paths(read_rows_parquet(meta_path(d, int(s.seg[i]))).take([int(s.loc[i])]))[0]


class RowsView(Sequence):
    """Row objects made on demand from a metadata table (one Python object per row only
    while a caller holds it)."""

    def __init__(self, table: Any) -> None:
        self._t = table
        self._n = 0 if table is None else table.num_rows

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return table_rows(self._t, range(self._n)[i])
        i = int(i) + (self._n if i < 0 else 0)
        if not 0 <= i < self._n:
            raise IndexError(f"row {i} is out of range for {self._n} rows")
        return table_rows(self._t, [i])[0]

    def __iter__(self) -> Any:
        for s in range(0, self._n, CHUNK):
            yield from table_rows(self._t, range(s, min(s + CHUNK, self._n)))


class FeatureCache:
    """Read access to a cache folder that ``simx embed`` wrote.

    ``embeddings`` is read-only [N, D] (one memmap once compacted, else a
    ``SegmentedEmbeddings`` over the segments' memmaps); row i belongs to ``paths[i]``.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        s = read_state(self.directory)
        self.meta: dict[str, Any] = s.meta
        self.table: Any = s.table  # the rows' metadata (pyarrow), row-aligned with embeddings
        self.rows: Sequence[Row] = RowsView(s.table)
        self.failures: list[Failure] = s.failures
        self.embeddings: Any = s.embeddings  # [N, D]: a memmap, or SegmentedEmbeddings
        self.paths: list[str] = [] if s.table is None else table_paths(s.table)
        self._row = {p: i for i, p in enumerate(self.paths)}
        # Every commit replaces cache.json by rename, so its inode and mtime and the
        # manifest's hash name the commit: what the FAISS index is keyed on.
        ident = repr([(os.path.basename(p), *rest) for p, *rest in s.identity])
        self.commit_id: str = hashlib.sha256(ident.encode()).hexdigest()[:16]

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @property
    def model_id(self) -> str:
        return str(self.meta["model_id"])

    def __len__(self) -> int:
        return len(self.paths)

    def __contains__(self, path: object) -> bool:
        return isinstance(path, (str, os.PathLike)) and canonical_path(path) in self._row

    def row(self, path: str | os.PathLike[str]) -> int:
        """The row of ``path`` in ``embeddings`` (the path is canonicalised first)."""
        key = canonical_path(path)
        try:
            return self._row[key]
        except KeyError:
            failed = next((f for f in self.failures if f.path == key), None)
            why = f"it failed to embed: {failed.error}" if failed else "it was never embedded"
            raise KeyError(f"{key} is not in the cache at {self.directory} ({why})") from None

    def vector(self, path: str | os.PathLike[str]) -> np.ndarray:
        return np.asarray(self.embeddings[self.row(path)])

    def __repr__(self) -> str:
        return f"FeatureCache({str(self.directory)!r}, model={self.model_id!r}, rows={len(self)})"
