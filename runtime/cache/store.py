"""The feature cache: a folder numpy, pyarrow and embedding-reader can use without simx.

Format 2 (written by this simx), append-only segments:
- ``cache.json``            the marker *and* the manifest: model identity (format, model id,
  spec hash, dim, options), ``count``, the live ``segments`` (id, row count, tombstoned
  rows), and the ``failures``. It is replaced by one atomic rename per commit: *that rename
  is the commit point*, and the only file a commit rewrites.
- ``img_emb/img_emb_N.npy``  float32 [n, D] rows of segment N (``np.load(mmap_mode="r")``);
- ``metadata/metadata_N.parquet``  row-aligned: path (+ ``path_hex`` for names that are not
  UTF-8), size, mtime_ns, ctime_ns, ino. This is the sharded npy + row-aligned metadata
  layout of clip-retrieval, autofaiss and embedding-reader (``parquet_npy``); parquet rather
  than jsonl because those tools read only parquet metadata, and because it pays for its
  dependency: at 1M rows parquet wrote 3.6x and read 4.2x (7.4x as columns) faster than
  jsonl, in 5.3x fewer bytes (benchmarks/results/metadata_format_amd-epyc-2c.md).
- ``failed.jsonl``          a mirror of the manifest's failures, one ``{"path", "error"}`` a line.

A live row is a segment row not in that segment's ``dead`` list (a file that changed,
was re-embedded or is gone). ``FeatureCache.embeddings`` is the live rows, segment after
segment. Tools that read ``img_emb/`` without the manifest see dead rows too until
``simx cache compact`` merges the segments into one and drops them (also done
automatically when dead rows pass ``COMPACT_DEAD_FRACTION``).

Commit (cost O(rows added): nothing committed is rewritten). Rows stream to
``.staging/img_emb_N.npy.new`` as batches finish (header patched at commit), so memory
stays bounded. A commit fsyncs the staged files, renames them into ``img_emb/`` and
``metadata/`` (segment files no manifest names are invisible: orphans), then renames the
new ``cache.json``. A crash before that rename leaves the previous commit and orphans
that the next writer deletes; after it, the new commit.

Format 1 (``embeddings.npy`` + ``index.jsonl`` + ``failed.jsonl`` + ``cache.json``, with a
``commit.json`` redo log) is still read, and upgraded at the first commit: its
``embeddings.npy`` becomes a segment by hard link (not rewritten).

Paths are absolute with their *directories* resolved (cwd, ``..`` and directory
symlinks canonicalised) but the file name kept as walked, so a symlinked image is keyed
by the name the user sees and a broken symlink is reported under its own name.

One writer at a time: ``fcntl.flock`` on ``.lock`` (never deleted, which would race).
Readers never take the lock: they check that ``cache.json`` did not change while they read.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import stat
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from simx.core import failpoints
from simx.core.errors import SimxError
from simx.core.fs import fsync_path, write_bytes_durably
from simx.cache.rowindex import UNKNOWN, PathIndex, path_keys

try:  # POSIX only; readers work without it (Windows), writers say why they cannot lock
    import fcntl
except ImportError:  # pragma: no cover - exercised by a subprocess test
    fcntl = None  # type: ignore[assignment]

FORMAT = "simx-feature-cache"
FORMAT_VERSION = 2
EMBEDDINGS = "embeddings.npy"  # format 1
INDEX = "index.jsonl"  # format 1
FAILED = "failed.jsonl"
META = "cache.json"
DATA_FILES = (EMBEDDINGS, INDEX, FAILED, META)  # format 1's four files
MANIFEST = "commit.json"  # format 1's redo log
LOCK = ".lock"
NEW = ".new"
TMP = ".tmp"
EMB_DIR = "img_emb"
META_DIR = "metadata"
STAGING = ".staging"
# Compact when more than this fraction of the stored rows are dead, or when this many
# segments pile up. Measured at 200k x 768 (benchmarks/results/compaction_amd-epyc-2c.md):
# at 25% dead one compaction (~3 s, 75% of the bytes) costs about what one slowed full read
# costs, and compacting at 10% would rewrite 90% of the cache for a smaller slowdown; each
# segment adds ~2-3 ms to every open and commit (0.5 s at 1 segment, 1.3 s at 512, 4-6 s
# at 2048), so 256 keeps that under ~0.5 s (a 30 s commit cadence reaches it in ~2 h).
COMPACT_DEAD_FRACTION = 0.25
COMPACT_SEGMENTS = 256


class CacheError(SimxError):
    """A cache folder that is missing, malformed, locked or made by another model."""


class CacheLockedError(CacheError):
    """Another process is writing the cache."""


class CacheMismatchError(CacheError):
    """The cache was made by another model or other preprocessing."""


class CacheWriteError(CacheError):
    """A commit failed on an OS error (full disk, file-size limit, read-only filesystem).

    The previous commit is intact and the partial files of this one are removed."""


DAMAGED_HINT = "re-run `simx embed` with --force to rebuild it"


def damaged(where: object, why: str) -> CacheError:
    """The one error for a cache whose files cannot be trusted."""
    return CacheError(f"{where}: the cache is damaged ({why}); {DAMAGED_HINT}")


@dataclass(frozen=True)
class Row:
    """One embedded file, and the stat that tells a re-run whether it changed.

    Size and mtime miss an in-place edit that restores the mtime (``touch -r``,
    ``exiftool -P``); the inode change time cannot be set by user space, and the inode
    number changes when a file is replaced by rename. Rows written before these were
    recorded (``None``) compare on size and mtime only.
    """

    path: str
    size: int
    mtime_ns: int
    ctime_ns: int | None = None
    ino: int | None = None

    @classmethod
    def of(cls, path: str, st: os.stat_result) -> Row:
        return cls(path, int(st.st_size), int(st.st_mtime_ns), int(st.st_ctime_ns), int(st.st_ino))

    def matches(self, st: os.stat_result) -> bool:
        """Whether the file with stat ``st`` is still the one this row was embedded from."""
        return (self.size == st.st_size and self.mtime_ns == st.st_mtime_ns
                and (self.ctime_ns is None or self.ctime_ns == st.st_ctime_ns)
                and (self.ino is None or self.ino == st.st_ino))


@dataclass(frozen=True)
class Failure:
    """One file that could not be embedded; re-runs retry it."""

    path: str
    error: str
    size: int | None = None
    mtime_ns: int | None = None


_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def canonical_path(p: str | os.PathLike[str], dirs: dict[str, str] | None = None) -> str:
    """The key a file has in the cache: absolute, directories resolved, name kept.

    ``dirs`` memoizes resolved folders during one walk (resolving costs a few syscalls
    per path component, and a folder holds many files). A URI (``s3://b/k``, the Ray
    engine's keys) is its own key.
    """
    if _URI.match(os.fspath(p)):
        return os.fspath(p)
    parent, name = os.path.split(os.path.abspath(os.fspath(p)))
    if dirs is None:
        return os.path.join(str(Path(parent).resolve()), name)
    if parent not in dirs:
        dirs[parent] = str(Path(parent).resolve())
    return os.path.join(dirs[parent], name)


# ----------------------------------------------------------------------------- file helpers
def encode_path(path: str) -> dict[str, str]:
    """A path as JSON fields, losslessly. A name that is not valid UTF-8 (``caf\\xe9.png``
    on Linux) is held by Python with surrogate escapes, which UTF-8 JSON cannot carry:
    then ``path`` is a readable form (U+FFFD for the bad bytes) and ``path_hex`` the
    exact bytes."""
    try:
        path.encode("utf-8")
        return {"path": path}
    except UnicodeEncodeError:
        raw = os.fsencode(path)
        return {"path": raw.decode("utf-8", "replace"), "path_hex": raw.hex()}


def decode_path(d: dict[str, Any]) -> str:
    """The inverse of ``encode_path``."""
    if "path_hex" in d:
        return os.fsdecode(bytes.fromhex(d["path_hex"]))
    p = d["path"]
    if not isinstance(p, str):
        raise TypeError(f"path is {type(p).__name__}, not a string")
    return p


def _jsonl(objs: Iterable[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(o, ensure_ascii=False) + "\n" for o in objs).encode()


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:
                    raise damaged(path, f"line {n} is not JSON") from None
                if not isinstance(obj, dict):
                    raise damaged(path, f"line {n} is not a JSON object")
                out.append(obj)
    return out


def _record(obj: Any) -> dict[str, Any]:
    """A Row or Failure as its JSON line: the path encoded, absent fields left out."""
    d = {k: v for k, v in asdict(obj).items() if v is not None}
    d.update(encode_path(d.pop("path")))
    return d


def _int_or_none(v: Any) -> int | None:
    return None if v is None else int(v)


def _row_from(d: dict[str, Any]) -> Row:
    return Row(decode_path(d), int(d["size"]), int(d["mtime_ns"]), _int_or_none(d.get("ctime_ns")),
               _int_or_none(d.get("ino")))


def _failure_from(d: dict[str, Any]) -> Failure:
    return Failure(decode_path(d), str(d["error"]), _int_or_none(d.get("size")),
                   _int_or_none(d.get("mtime_ns")))


def _check_sorted(paths: Sequence[str], where: Path) -> None:
    """Rows are written sorted and unique; anything else (a duplicated line) would shift
    every later row onto the wrong vector."""
    for i in range(1, len(paths)):
        if not paths[i - 1] < paths[i]:
            what = "duplicated" if paths[i - 1] == paths[i] else "out of order"
            raise damaged(where, f"row {i + 1} ({paths[i]!r}) is {what}")


def _require_regular(p: Path) -> None:
    """Refuse a FIFO, device or folder where a cache file should be: opening a FIFO blocks."""
    try:
        st = os.stat(p)
    except FileNotFoundError:
        return
    if not stat.S_ISREG(st.st_mode):
        raise damaged(p, "not a regular file")


# ----------------------------------------------------------------------------- reading
@dataclass
class CacheState:
    """One committed state of a cache folder."""

    meta: dict[str, Any]
    table: Any  # the live rows' metadata: a pyarrow Table in ROW_COLUMNS (None: no rows)
    failures: list[Failure]
    embeddings: Any  # read-only [N, D]: a memmap, or SegmentedEmbeddings over several
    identity: tuple = ()  # (path, inode, size, mtime_ns) of each file read: new at every commit
    # Where each live row is stored: segment id (-1 is format 1's file) and row in it.
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


def _pending_names(d: Path) -> list[str] | None:
    """Files named by a pending commit manifest, or None when no commit is pending."""
    p = d / MANIFEST
    try:
        if not stat.S_ISREG(os.stat(p).st_mode):
            raise damaged(p, "not a regular file")
        doc = json.loads(p.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None  # cannot be torn (written by rename); treat as absent anyway
    files = doc.get("files") if isinstance(doc, dict) else None
    if not isinstance(files, list):
        raise damaged(p, "the commit manifest has no list of files")
    return [f for f in files if f in DATA_FILES]


def _current_files(d: Path) -> dict[str, Path]:
    """Where each data file's committed version is now: while a commit is half-renamed,
    ``NAME.new`` (if still there) is the committed one."""
    pending = set(_pending_names(d) or ())
    out = {}
    for name in DATA_FILES:
        new = d / (name + NEW)
        out[name] = new if name in pending and new.exists() else d / name
    return out


def _identity(files: dict[str, Path]) -> tuple[tuple[str, int, int, int], ...]:
    """Which file versions a read saw. Every commit replaces all four files by rename, so
    a commit that overlaps a read changes at least one (path, inode, size, mtime)."""
    out = []
    for p in files.values():
        try:
            st = os.stat(p)
            out.append((str(p), st.st_ino, st.st_size, st.st_mtime_ns))
        except FileNotFoundError:
            out.append((str(p), -1, -1, -1))
    return tuple(out)


class _Raced(Exception):
    """A commit happened while we read; read again."""


def _read_once(d: Path, table: bool = True) -> CacheState:
    """One read; ``table=False`` (a writer) keeps keys and stats but not the rows' table
    (format 1's table is always kept: its first commit writes it as a segment)."""
    if _version_of(d) >= 2:
        return _read_v2_once(d, table)
    files = _current_files(d)
    before = _identity(files)
    try:
        state = _parse(d, files)
    except CacheError:
        if _identity(_current_files(d)) != before:
            raise _Raced() from None
        raise
    except (OSError, ValueError, KeyError, TypeError, AttributeError, EOFError) as e:
        if _identity(_current_files(d)) != before:
            raise _Raced() from None  # a commit replaced a file while we read it
        if isinstance(e, FileNotFoundError) and not files[META].exists():
            raise CacheError(f"{d} is not a simx feature cache (no {META})") from None
        raise damaged(d, f"{type(e).__name__}: {e}") from None
    if _identity(_current_files(d)) != before:
        raise _Raced()
    state.identity = before
    state.seg = np.full(state.count, -1, np.int32)
    state.loc = np.arange(state.count, dtype=np.int64)
    state.keys, state.stats = table_keys(state.table), table_stats(state.table)
    return state


def _parse(d: Path, files: dict[str, Path]) -> CacheState:
    for p in files.values():
        _require_regular(p)
    try:
        meta = json.loads(files[META].read_text())
    except json.JSONDecodeError:
        raise damaged(files[META], "not valid JSON") from None
    if not isinstance(meta, dict):
        raise damaged(files[META], f"a JSON {type(meta).__name__}, not an object")
    if meta.get("format") != FORMAT:
        raise CacheError(f"{d}: {META} is not a simx feature cache (format {meta.get('format')!r})")
    _check_meta(d, files[META], meta)
    rows = [_row_from(r) for r in _read_jsonl(files[INDEX])]
    _check_sorted([r.path for r in rows], files[INDEX])
    failures = [_failure_from(r) for r in _read_jsonl(files[FAILED])]
    emb = np.load(files[EMBEDDINGS], mmap_mode="r", allow_pickle=False)
    if not isinstance(emb, np.ndarray):
        raise damaged(files[EMBEDDINGS], f"a {type(emb).__name__}, not one .npy array")
    if emb.dtype != np.float32 or emb.ndim != 2:
        raise damaged(files[EMBEDDINGS], f"{emb.dtype} {emb.shape}, not float32 [N, D]")
    return CacheState(meta, _rows_table(rows), failures, emb)


def _consistent(s: CacheState) -> bool:
    n, dim = s.meta["count"], s.meta["dim"]
    return s.count == n == s.embeddings.shape[0] and s.embeddings.shape[1] == dim


# ----------------------------------------------------------------------------- format 2
def _check_meta(d: Path, where: Path, meta: dict[str, Any]) -> None:
    """The fields every reader relies on, for either format."""
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise CacheError(f"{d}: cache format {meta['format_version']} is newer than this simx; upgrade")
    for key in ("count", "dim"):
        if not isinstance(meta.get(key), int) or isinstance(meta.get(key), bool) or meta[key] < 0:
            raise damaged(where, f"{key} is {meta.get(key)!r}, not a count")


def _version_of(d: Path) -> int:
    """The format of the committed cache.json (1 when unreadable: format 1's reader explains)."""
    p = d / META
    try:
        if not stat.S_ISREG(os.stat(p).st_mode):
            return 1
        meta = json.loads(p.read_bytes())
    except (OSError, ValueError):
        return 1
    v = meta.get("format_version") if isinstance(meta, dict) else None
    return v if isinstance(v, int) and not isinstance(v, bool) else 1


def emb_path(d: Path, seg: int) -> Path:
    return d / EMB_DIR / f"img_emb_{seg}.npy"


def meta_path(d: Path, seg: int) -> Path:
    return d / META_DIR / f"metadata_{seg}.parquet"


_SEG_NAME = re.compile(r"^(?:img_emb|metadata)_(\d+)\.(?:npy|parquet)$")


def _pyarrow() -> tuple[Any, Any]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise CacheError("simx caches keep their row metadata in parquet, which needs pyarrow: "
                         "pip install 'simx-embed[cpu]' (or pip install pyarrow)") from None
    return pa, pq


# The row metadata columns, in this order, in memory (a segment file may lack the optional
# ones: older writers, or no name that needed path_hex).
ROW_COLUMNS = ("path", "size", "mtime_ns", "ctime_ns", "ino", "path_hex")
_REQUIRED = ("path", "size", "mtime_ns")
_CHUNK = 65536  # rows turned into Python objects at a time (bounded memory)


def _rows_table(rows: Sequence[Row]) -> Any:
    """Row-aligned metadata as an Arrow table (path_hex only where a name is not UTF-8)."""
    pa, _ = _pyarrow()
    enc = [encode_path(r.path) for r in rows]
    cols: dict[str, Any] = {
        "path": pa.array([e["path"] for e in enc], pa.string()),
        "size": pa.array([r.size for r in rows], pa.int64()),
        "mtime_ns": pa.array([r.mtime_ns for r in rows], pa.int64()),
        "ctime_ns": pa.array([r.ctime_ns for r in rows], pa.int64()),
        "ino": pa.array([r.ino for r in rows], pa.int64()),
    }
    cols["path_hex"] = pa.array([e.get("path_hex") for e in enc], pa.string())
    return pa.table(cols)


def _normalized(t: Any, where: object) -> Any:
    """``t`` with exactly ROW_COLUMNS (missing optional ones as nulls), or damage."""
    pa, _ = _pyarrow()
    types = {"path": pa.string(), "path_hex": pa.string()}
    cols = []
    for name in ROW_COLUMNS:
        typ = types.get(name, pa.int64())
        if name not in t.column_names:
            if name in _REQUIRED:
                raise damaged(where, f"the row metadata has no {name!r} column")
            cols.append(pa.nulls(t.num_rows, typ))
            continue
        col = t.column(name)
        if col.type != typ:
            try:
                col = col.cast(typ)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                raise damaged(where, f"the {name!r} column is {col.type}, not {typ}") from None
        if name in _REQUIRED and col.null_count:
            raise damaged(where, f"a row has no {name}")
        cols.append(col)
    return pa.table(cols, names=list(ROW_COLUMNS))


def _concat(tables: list[Any]) -> Any:
    pa, _ = _pyarrow()
    return pa.concat_tables(tables) if tables else None


def table_paths(t: Any, start: int = 0, stop: int | None = None) -> list[str]:
    """The exact paths of rows ``start:stop`` (path_hex decoded where present)."""
    stop = t.num_rows if stop is None else stop
    paths = t.column("path").slice(start, stop - start).to_pylist()
    hexes = t.column("path_hex").slice(start, stop - start)
    if hexes.null_count < len(hexes):
        paths = [os.fsdecode(bytes.fromhex(h)) if h else p for p, h in zip(paths, hexes.to_pylist())]
    return paths


def table_rows(t: Any, idx: Sequence[int] | np.ndarray) -> list[Row]:
    """Rows ``idx`` of a metadata table as Row objects."""
    sub = t.take(np.asarray(idx, np.int64))
    cols = [sub.column(n).to_pylist() for n in ("size", "mtime_ns", "ctime_ns", "ino")]
    return [Row(p, *v) for p, *v in zip(table_paths(sub), *cols)]


def table_keys(t: Any) -> tuple[np.ndarray, np.ndarray]:
    """``path_keys`` of every row, turning at most _CHUNK paths into strings at a time."""
    parts = [path_keys(table_paths(t, s, min(s + _CHUNK, t.num_rows)))
             for s in range(0, t.num_rows, _CHUNK)]
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0, np.uint32)
    return np.concatenate([h for h, _ in parts]), np.concatenate([c for _, c in parts])


def table_stats(t: Any) -> dict[str, np.ndarray]:
    """size, mtime_ns, ctime_ns and ino as int64 arrays (UNKNOWN where not recorded)."""
    import pyarrow.compute as pc

    return {n: np.asarray(pc.fill_null(t.column(n), UNKNOWN).to_numpy(), np.int64)
            for n in ("size", "mtime_ns", "ctime_ns", "ino")}


def _path_order(t: Any) -> np.ndarray:
    """The permutation that sorts rows by path as Python compares str (code points: the
    order of UTF-8 bytes, which Arrow sorts by, unless a name needed path_hex)."""
    if t.column("path_hex").null_count == t.num_rows:
        import pyarrow.compute as pc

        return np.asarray(pc.sort_indices(t, sort_keys=[("path", "ascending")]), np.int64)
    paths = table_paths(t)
    return np.array(sorted(range(len(paths)), key=paths.__getitem__), np.int64)


def _write_table_parquet(path: Path, table: Any) -> None:
    _, pq = _pyarrow()
    if table.column("path_hex").null_count == table.num_rows:
        table = table.drop_columns(["path_hex"])  # the common case: every name is UTF-8
    # Row groups of _CHUNK rows: a reader streams them (_segment_rows) in bounded memory.
    pq.write_table(table, str(path), compression="zstd", row_group_size=_CHUNK)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_rows_parquet(path: Path) -> Any:
    """A segment's metadata as a normalized table (damage if it is not one)."""
    pa, pq = _pyarrow()
    _require_regular(path)
    try:
        t = pq.read_table(str(path))
    except pa.ArrowException as e:
        raise damaged(path, f"not a parquet file ({str(e).splitlines()[0]})") from None
    return _normalized(t, path)


def _segments_of(where: Path, meta: dict[str, Any]) -> list[dict[str, Any]]:
    segs = meta.get("segments")
    if not isinstance(segs, list):
        raise damaged(where, "the manifest has no list of segments")
    out = []
    for s in segs:
        if not (isinstance(s, dict) and isinstance(s.get("id"), int) and isinstance(s.get("rows"), int)
                and isinstance(s.get("dead", []), list)):
            raise damaged(where, f"a malformed segment entry {s!r}")
        dead = s.get("dead", [])
        if any(not isinstance(x, int) or not 0 <= x < s["rows"] for x in dead):
            raise damaged(where, f"segment {s['id']} tombstones a row it does not have")
        out.append({"id": s["id"], "rows": s["rows"], "dead": sorted(set(dead))})
    return out


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


def _stat_id(p: Path) -> tuple[str, int, int, int]:
    try:
        st = os.stat(p)
        return (str(p), st.st_ino, st.st_size, st.st_mtime_ns)
    except FileNotFoundError:
        return (str(p), -1, -1, -1)


def _read_v2_once(d: Path, table: bool = True) -> CacheState:
    """One read of a format-2 cache; a commit that replaced cache.json meanwhile is a race."""
    before = (_stat_id(d / META),)
    try:
        raw = (d / META).read_bytes()
        state = _parse_v2(d, raw, table)
    except CacheError:
        if (_stat_id(d / META),) != before:
            raise _Raced() from None
        raise
    except (OSError, ValueError, KeyError, TypeError, AttributeError, EOFError, IndexError) as e:
        if (_stat_id(d / META),) != before:
            raise _Raced() from None  # a compaction removed a segment we were opening
        raise damaged(d, f"{type(e).__name__}: {e}") from None
    if (_stat_id(d / META),) != before:
        raise _Raced()
    state.identity = (*before, ("manifest", hashlib.sha256(raw).hexdigest()))
    return state


def _segment_rows(mp: Path, keep: np.ndarray | None, table: bool) -> tuple[Any, int, tuple, dict]:
    """One segment's metadata: (its live rows' table or None, rows stored, keys, stats),
    read a row group batch at a time so that only ``table=True`` holds every row."""
    pa, pq = _pyarrow()
    _require_regular(mp)
    parts, keys, stats, n = [], [], [], 0
    try:
        for b in pq.ParquetFile(str(mp)).iter_batches(batch_size=_CHUNK):
            t = _normalized(pa.Table.from_batches([b]), mp)
            n += t.num_rows
            keys.append(table_keys(t))
            stats.append(table_stats(t))
            if table:
                parts.append(t)
    except pa.ArrowException as e:
        raise damaged(mp, f"not a parquet file ({str(e).splitlines()[0]})") from None
    h = np.concatenate([k[0] for k in keys]) if keys else np.zeros(0, np.int64)
    c = np.concatenate([k[1] for k in keys]) if keys else np.zeros(0, np.uint32)
    st = {f: np.concatenate([x[f] for x in stats]) if stats else np.zeros(0, np.int64)
          for f in ("size", "mtime_ns", "ctime_ns", "ino")}
    t = (_concat(parts) or _rows_table([])) if table else None
    if keep is not None and (not len(keep) or keep[-1] < n):  # else damage: the caller says
        h, c = h[keep], c[keep]
        st = {f: v[keep] for f, v in st.items()}
        t = None if t is None else t.take(keep)
    return t, n, (h, c), st


def _parse_v2(d: Path, raw: bytes, table: bool = True) -> CacheState:
    where = d / META
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError:
        raise damaged(where, "not valid JSON") from None
    if not isinstance(meta, dict):
        raise damaged(where, f"a JSON {type(meta).__name__}, not an object")
    if meta.get("format") != FORMAT:
        raise CacheError(f"{d}: {META} is not a simx feature cache (format {meta.get('format')!r})")
    _check_meta(d, where, meta)
    dim = meta["dim"]
    parts, keeps, tables, segs, locs, keys, stats = [], [], [], [], [], [], []
    for s in _segments_of(where, meta):
        ep, mp = emb_path(d, s["id"]), meta_path(d, s["id"])
        _require_regular(ep)
        emb = np.load(ep, mmap_mode="r", allow_pickle=False)
        if not isinstance(emb, np.ndarray) or emb.dtype != np.float32 or emb.ndim != 2:
            raise damaged(ep, "not one float32 [n, D] .npy array")
        if emb.shape != (s["rows"], dim):
            raise damaged(ep, f"shape {emb.shape}, the manifest says ({s['rows']}, {dim})")
        keep = None
        if s["dead"]:
            live = np.ones(s["rows"], bool)
            live[s["dead"]] = False
            keep = np.flatnonzero(live)
        seg_rows, stored, seg_keys, seg_stats = _segment_rows(mp, keep, table)
        if stored != s["rows"]:
            raise damaged(mp, f"{stored} rows, the manifest says {s['rows']}")
        locs.append(np.arange(s["rows"], dtype=np.int64) if keep is None else keep.astype(np.int64))
        tables.append(seg_rows)
        keys.append(seg_keys)
        stats.append(seg_stats)
        segs.append(np.full(len(locs[-1]), s["id"], np.int32))
        parts.append(emb)
        keeps.append(keep)
    table = _concat(tables) if table else None
    n = sum(len(x) for x in locs)
    if n != meta["count"]:
        raise damaged(where, f"{n} live rows, the manifest says {meta['count']}")
    fails = meta.get("failures", [])
    if not isinstance(fails, list) or any(not isinstance(f, dict) for f in fails):
        raise damaged(where, "failures is not a list of objects")
    failures = [_failure_from(f) for f in fails]
    if len(parts) == 1 and keeps[0] is None:
        embeddings: Any = parts[0]  # a compacted cache is one array
    elif not parts:
        embeddings = np.zeros((0, dim), np.float32)
    else:
        embeddings = SegmentedEmbeddings(parts, keeps, dim)
    state = CacheState(meta, table, failures, embeddings, n=n,
                       seg=np.concatenate(segs) if segs else np.zeros(0, np.int32),
                       loc=np.concatenate(locs) if locs else np.zeros(0, np.int64))
    if keys:
        state.keys = (np.concatenate([k[0] for k in keys]), np.concatenate([k[1] for k in keys]))
        state.stats = {f: np.concatenate([x[f] for x in stats]) for f in stats[0]}
    return state


def read_state(d: str | os.PathLike[str], retries: int = 3,
               race_timeout: float = 10.0, table: bool = True) -> CacheState:
    """Read a consistent committed state without taking the lock.

    A writer may commit while we read; then the files we saw change under us and we
    read again, for up to ``race_timeout`` seconds (a commit takes milliseconds, and
    writers commit every 30 s). Files that disagree although nothing changed while we
    read them are damage, reported after ``retries`` reads.
    """
    d = Path(d)
    if not d.is_dir():
        raise CacheError(f"no simx feature cache at {d} (not a folder)")
    deadline = time.monotonic() + race_timeout
    bad_reads = 0
    while True:
        try:
            s = _read_once(d, table)
            if _consistent(s):
                _check_unique(s, d / META)
                return s
            bad_reads += 1
        except _Raced:  # a commit overlapped the read
            if time.monotonic() > deadline:
                raise CacheError(f"{d}: could not read a stable state for {race_timeout:g} s "
                                 "(a writer commits continuously?)") from None
        if bad_reads >= retries:
            raise damaged(d, "its files disagree: the row counts differ")
        time.sleep(0.01)




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
    return table_paths(_read_rows_parquet(meta_path(d, int(s.seg[i]))).take([int(s.loc[i])]))[0]


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
        for s in range(0, self._n, _CHUNK):
            yield from table_rows(self._t, range(s, min(s + _CHUNK, self._n)))


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
        # Every commit replaces cache.json (format 1: all four files) by rename, so inodes,
        # mtimes and the manifest's hash name the commit: what the FAISS index is keyed on.
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


# ----------------------------------------------------------------------------- writing
def make_meta(spec: Any, count: int, failed: int,
              options: dict[str, Any] | None = None,
              model_path: str | os.PathLike[str] | None = None,
              run: dict[str, str] | None = None) -> dict[str, Any]:
    """cache.json. Deterministic (no timestamps), so a re-run and a clean run agree byte for byte.

    ``options`` are the runtime choices that change the numbers without changing the model
    (``fast`` resampling, ``exif_transpose``); a cache refuses rows made with others.
    ``model_path`` (absolute) lets ``simx search`` find the model from any folder; it is
    a hint, not identity (the spec hash is). ``run`` is the provider and precision that
    filled the cache (bf16 through OpenVINO is not fp32 on the CPU provider); without it,
    the file's own precision on the CPU provider.
    """
    from simx.core.version import __version__

    p = spec.preprocess
    ran = run_of({"precision": spec.precision} | dict(run or {}))
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_id": spec.id,
        "spec_hash": spec.embedding_hash(),
        "source": spec.source,
        "weights": spec.weights,
        "precision": ran["precision"],
        "provider": ran["provider"],
        "dim": int(spec.dim),
        "normalize": bool(spec.normalize),
        "preprocess": {"resize": p.resize, "crop": p.crop, "interpolation": p.interpolation,
                       "mean": list(p.mean), "std": list(p.std)},
        "options": dict(sorted((options or {}).items())),
        "count": int(count),
        "failed": int(failed),
        "simx_version": __version__,
    } | ({"model_path": os.path.abspath(os.fspath(model_path))} if model_path else {})


def run_of(meta: dict[str, Any]) -> dict[str, str]:
    """The provider and precision a cache's rows were made with. Caches written before
    simx recorded them ran fp32 on the CPU provider (the only path there was)."""
    return {"provider": str(meta.get("provider") or "cpu"),
            "precision": str(meta.get("precision") or "fp32")}


def check_run(directory: Path, meta: dict[str, Any], run: dict[str, str]) -> None:
    """Refuse to mix rows of another precision into a cache (``--force`` rebuilds it)."""
    old, new = run_of(meta), run_of({"precision": meta.get("precision")} | run)
    if old["precision"] != new["precision"]:
        raise CacheMismatchError(
            f"cache {directory} holds {old['precision']} embeddings (provider {old['provider']}); "
            f"this run makes {new['precision']} (provider {new['provider']}). Mixing precisions "
            "in one cache is refused: use the same --precision/--provider, another --cache, "
            "or --force to rebuild it")


def _flags(options: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in options.items()) or "default options"


def identity_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """The part of cache.json that ``make_meta`` writes (what a re-run compares), without the
    manifest's bookkeeping (segments, failures, generation)."""
    return {k: v for k, v in meta.items() if k not in ("segments", "failures", "generation",
                                                       "next_segment")}


_NPY_HEADER = 128  # bytes reserved for a streamed segment's .npy header (patched at commit)


def _npy_header(n: int, dim: int) -> bytes:
    """A version-1.0 .npy header for float32 [n, dim], padded to exactly _NPY_HEADER bytes."""
    d = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + f"{n}, {dim}" + "), }"
    body = d.ljust(_NPY_HEADER - 10 - 1) + "\n"
    return b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body.encode("latin1")


class _Staged:
    """The segment the next commit adds, streamed to disk as rows arrive."""

    def __init__(self, directory: Path, seg: int, dim: int) -> None:
        self.seg, self.dim = seg, dim
        self.emb = directory / STAGING / f"img_emb_{seg}.npy{NEW}"
        self.meta = directory / STAGING / f"metadata_{seg}.parquet{NEW}"
        self.fd = os.open(self.emb, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        self.size = 0
        self.n = 0  # rows appended
        self._tables: list[Any] = []  # their metadata, in order ...
        self._rows: list[Row] = []  # ... the last ones still as Rows (up to _CHUNK)
        self.dead: set[int] = set()
        try:
            self._write(_npy_header(0, dim))
        except OSError:
            self.discard()
            raise

    def _write(self, data: bytes) -> None:
        # Reserve the blocks first, so a full disk fails here with ENOSPC, not later.
        try:
            os.posix_fallocate(self.fd, self.size, len(data))
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise
        view = memoryview(data)
        while view:
            k = os.pwrite(self.fd, view, self.size)
            self.size += k
            view = view[k:]

    def append(self, rows: Sequence[Row] | Any, emb: np.ndarray) -> None:
        """Append rows (Row objects, or a metadata table in ROW_COLUMNS) and their vectors."""
        n = len(rows) if isinstance(rows, Sequence) else rows.num_rows
        a = np.ascontiguousarray(emb, dtype=np.float32)
        if a.shape != (n, self.dim):
            raise ValueError(f"embeddings are {a.shape}, expected {(n, self.dim)}")
        self._write(a.tobytes())
        self.n += n
        if isinstance(rows, Sequence):
            self._rows.extend(rows)
            if len(self._rows) >= _CHUNK:
                self._flush()
        else:
            self._flush()
            self._tables.append(rows)

    def _flush(self) -> None:
        if self._rows:
            self._tables.append(_rows_table(self._rows))
            self._rows = []

    def finish(self) -> None:
        """Patch the header with the row count; fsync; write the metadata beside it."""
        os.pwrite(self.fd, _npy_header(self.n, self.dim), 0)
        os.fsync(self.fd)
        self.close()
        self._flush()
        _write_table_parquet(self.meta, _concat(self._tables))
        self._tables = []

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def discard(self) -> None:
        self.close()
        for p in (self.emb, self.meta):
            try:
                p.unlink(missing_ok=True)
            except OSError:
                pass


class CacheWriter:
    """The single writer of a cache folder: holds the lock, recovers, appends, commits.

    Opening it takes the lock (waiting up to ``lock_timeout`` seconds; 0 fails at once,
    a negative value waits forever), finishes or discards any interrupted commit, and
    loads the committed state. A cache whose spec hash differs from ``spec`` is refused
    unless ``force``, which starts from an empty state (the old files are dropped at the
    first commit, so an interrupted ``--force`` run leaves the old cache intact).

    The API every engine uses: ``add(rows, embeddings)`` streams rows to the next
    segment (a path that already has a live row gets its old row tombstoned),
    ``remove(paths)`` tombstones rows, and ``commit(failures)`` publishes both atomically.
    ``count`` and ``failures`` are the state including what is staged. The live rows are
    held in ``index`` (a ``PathIndex``: ~20 B a row, plus the stat columns of the rows it
    opened with), never as one Python object per row, so a writer's memory stays small
    beside its cache (benchmarks/results/embed_scale_amd-epyc-2c.md).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        spec: Any,
        *,
        force: bool = False,
        lock_timeout: float = 0.0,
        options: dict[str, Any] | None = None,
        model_path: str | os.PathLike[str] | None = None,
        compact_dead: float = COMPACT_DEAD_FRACTION,
        run: dict[str, str] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.spec = spec
        self.model_path = model_path
        self.compact_dead = compact_dead
        self.run = run  # provider and precision of the rows this writer adds (None: the cache's)
        # None: keep the cache's own options (a writer that only rewrites rows).
        self.options = None if options is None else dict(sorted(options.items()))
        if self.directory.exists() and not self.directory.is_dir():
            raise CacheError(f"cache path {self.directory} exists and is not a folder")
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd: int | None = None
        self.keep_meta: dict[str, Any] | None = None
        self._staged: _Staged | None = None
        # Segment files without a cache.json are a crashed first commit if a simx writer
        # held this folder (its .lock is there), else another tool's shards: not ours.
        self._ours = (self.directory / LOCK).exists() or (self.directory / META).exists()
        self._clear_special(force)
        self._lock(lock_timeout)
        try:
            self.recover()
            self._init_from(self._load(force))
        except BaseException:
            self.close()
            raise

    def _clear_special(self, force: bool) -> None:
        """A folder, FIFO or device where a cache file belongs: damage, removed by --force."""
        d = self.directory
        names = (LOCK, MANIFEST, MANIFEST + TMP, META + TMP, *DATA_FILES, *(n + NEW for n in DATA_FILES))
        for name in names:
            p = d / name
            try:
                st = os.lstat(p)
            except FileNotFoundError:
                continue
            if stat.S_ISREG(st.st_mode):
                continue
            if not force:
                raise damaged(p, "not a regular file")
            if stat.S_ISDIR(st.st_mode):
                shutil.rmtree(p)
            else:
                p.unlink()
        for name in (EMB_DIR, META_DIR, STAGING):
            p = d / name
            if p.exists() and not p.is_dir():
                if not force:
                    raise damaged(p, "not a folder")
                p.unlink()
        if force and _version_of(d) < 2:
            try:
                _pending_names(d)
            except CacheError:  # a malformed manifest cannot be redone: drop it
                (d / MANIFEST).unlink()

    # -- lock ----------------------------------------------------------------------------
    def _lock(self, timeout: float) -> None:
        if fcntl is None:
            raise CacheError("writing a cache needs POSIX file locks (fcntl), which this "
                             "platform lacks; caches can still be read here")
        if timeout != timeout:  # NaN would never reach the deadline
            raise CacheError("the lock timeout is NaN; give seconds, 0, or -1 to wait forever")
        fd = os.open(self.directory / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = None if timeout < 0 else time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
            if deadline is not None and time.monotonic() >= deadline:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
                os.close(fd)
                who = f" (pid {holder})" if holder.isdigit() else ""
                waited = f" after waiting {timeout:g} s" if timeout > 0 else ""
                raise CacheLockedError(
                    f"cache {self.directory} is being written by another process{who}{waited}; "
                    "wait for it, or pass --lock-timeout SECONDS to wait"
                )
            time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd

    def close(self) -> None:
        """Release the lock. Committed data stays; nothing uncommitted is kept."""
        if self._staged is not None:
            self._staged.discard()
            self._staged = None
        try:
            (self.directory / STAGING).rmdir()
        except OSError:
            pass
        if self._lock_fd is not None:
            try:
                os.ftruncate(self._lock_fd, 0)
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            finally:
                os.close(self._lock_fd)
                self._lock_fd = None

    def __enter__(self) -> CacheWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- recovery ------------------------------------------------------------------------
    def recover(self) -> None:
        """Bring the folder to its last commit: finish a format-1 redo log, drop staged and
        orphan segment files (written by a commit that never reached its manifest)."""
        d = self.directory
        shutil.rmtree(d / STAGING, ignore_errors=True)
        (d / (META + TMP)).unlink(missing_ok=True)
        if _version_of(d) < 2:
            names = _pending_names(d)
            if names is not None:
                for name in names:
                    if (d / (name + NEW)).exists():
                        os.replace(d / (name + NEW), d / name)
                fsync_path(d)
                (d / MANIFEST).unlink(missing_ok=True)
                fsync_path(d)
            elif (d / MANIFEST).exists():
                (d / MANIFEST).unlink()
            for name in (*(n + NEW for n in DATA_FILES), MANIFEST + TMP):
                (d / name).unlink(missing_ok=True)
            if (d / META).exists() or self._ours:
                self._remove_orphans(set())
            return
        try:
            meta = json.loads((d / META).read_bytes())
            live = {s["id"] for s in _segments_of(d / META, meta)}
        except (ValueError, CacheError, TypeError, KeyError):
            return  # damaged: _load says so (or --force rebuilds)
        self._remove_orphans(live)
        for name in (EMBEDDINGS, INDEX, MANIFEST, *(n + NEW for n in DATA_FILES), MANIFEST + TMP):
            (d / name).unlink(missing_ok=True)  # format 1 left over from an upgrade
        self._mirror_failures(meta.get("failures", []))

    def _remove_orphans(self, live: set[int]) -> None:
        for sub in (EMB_DIR, META_DIR):
            folder = self.directory / sub
            if not folder.is_dir():
                continue
            for p in folder.iterdir():
                m = _SEG_NAME.match(p.name)
                if m and int(m.group(1)) not in live:
                    p.unlink()

    def _mirror_failures(self, failures: list[dict[str, Any]]) -> None:
        """failed.jsonl, for people and scripts that grep it; the manifest is the truth."""
        p = self.directory / FAILED
        data = _jsonl(failures)
        try:
            if p.read_bytes() == data:
                return
        except FileNotFoundError:
            pass
        write_bytes_durably(self.directory / (FAILED + TMP), data)
        os.replace(self.directory / (FAILED + TMP), p)

    def _load(self, force: bool) -> CacheState:
        d = self.directory
        empty = CacheState({}, None, [], np.zeros((0, int(self.spec.dim)), np.float32))
        if not (d / META).exists():
            mine = (EMB_DIR, META_DIR) if self._ours else ()
            leftovers = [n for n in (EMBEDDINGS, INDEX, EMB_DIR, META_DIR)
                         if (d / n).exists() and n not in mine]
            if leftovers and not force:
                raise CacheError(
                    f"{d} holds {', '.join(leftovers)} but no {META}; not a simx cache "
                    "(use --force to overwrite, or pick another folder)"
                )
            return empty
        try:
            state = read_state(d, retries=1, table=False)
        except CacheError:
            if force:
                return empty
            raise
        want = self.spec.embedding_hash()
        if state.meta.get("spec_hash") != want:
            if force:
                return empty
            raise CacheMismatchError(
                f"cache {d} was made by model {state.meta.get('model_id')!r} "
                f"(spec hash {state.meta.get('spec_hash')}); this model is {self.spec.id!r} "
                f"({want}), with other weights or preprocessing. Use another --cache, "
                "or --force to rebuild it"
            )
        if self.options is None:
            self.options = dict(state.meta.get("options", {}))
        elif state.meta.get("options", {}) != self.options:
            if force:
                return empty
            raise CacheMismatchError(
                f"cache {d} was made with {_flags(state.meta.get('options', {}))}, this run uses "
                f"{_flags(self.options)} (e.g. --fast, --exif-transpose), which change the "
                "embeddings. Use the same flags, another --cache, or --force to rebuild it"
            )
        if self.run is None:
            self.run = run_of(state.meta)
        else:
            try:
                check_run(d, state.meta, self.run)
            except CacheMismatchError:
                if force:
                    return empty
                raise
        return state

    def _init_from(self, state: CacheState) -> None:
        """The writer's own view: live rows and where they are, segments and their tombstones."""
        d = self.directory
        self.meta = state.meta
        self.failures: list[Failure] = list(state.failures)
        ids = {int(m.group(1)) for sub in (EMB_DIR, META_DIR) if (d / sub).is_dir()
               for p in (d / sub).iterdir() if (m := _SEG_NAME.match(p.name))}
        self._segments: list[dict[str, Any]] = []
        self._v1: int | None = None  # segment id format 1's embeddings.npy will get
        self._v1_table: Any = None
        seg = state.seg
        if state.meta.get("format_version", FORMAT_VERSION) >= 2:
            self._segments = [{"id": s["id"], "rows": s["rows"], "dead": set(s["dead"])}
                              for s in _segments_of(d / META, state.meta)] if state.meta else []
            ids |= {s["id"] for s in self._segments}
            ids.add(int(state.meta.get("next_segment", 0)) - 1)
        self._next = max(ids, default=-1) + 1
        self._generation = int(state.meta.get("generation", 0))
        if state.meta and state.meta.get("format_version", 1) < 2:
            self._v1 = self._next
            self._next += 1
            self._v1_table = state.table
            self._segments = [{"id": self._v1, "rows": state.count, "dead": set()}]
            seg = np.full(state.count, self._v1, np.int32)
        # The live rows by path, with the stat each was embedded from (the re-run's diff).
        # A table of 1M rows is ~100 MB of Arrow buffers: dropped once indexed.
        stats, state.stats = (state.stats if state.count else None), None
        keys, state.keys = state.keys, ()
        self.index = PathIndex.build(*keys, seg, state.loc, stats)  # owns the arrays now
        self._dirty = False
        self._mm: dict[int, np.ndarray] = {}

    # -- the engine API ------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._lock_fd is None:
            raise CacheError("the cache writer is closed")

    @property
    def count(self) -> int:
        """Live rows, including those staged for the next commit."""
        return len(self.index)

    def _tombstone(self, where: tuple[int, int]) -> None:
        seg, local = where
        if self._staged is not None and seg == self._staged.seg:
            self._staged.dead.add(local)
        else:
            next(s for s in self._segments if s["id"] == seg)["dead"].add(local)
        self._dirty = True

    def find(self, paths: Sequence[str]) -> np.ndarray:
        """Index positions of the committed live rows of ``paths`` (-1: none), for
        ``index.stats`` and ``remove_at``. Rows added by this writer are not searched."""
        self.index.merge()
        return self.index.find(*path_keys(paths))

    def paths_at(self, positions: np.ndarray) -> list[str]:
        """The paths of the committed rows at index ``positions``, read from their segments."""
        seg, loc = self.index.seg[positions], self.index.loc[positions]
        out: list[str] = [""] * len(positions)
        for sg in np.unique(seg):
            m = np.flatnonzero(seg == sg)
            t = (self._v1_table if sg == self._v1 else
                 _read_rows_parquet(meta_path(self.directory, int(sg))))
            for j, p in zip(m, table_paths(t.take(loc[m]))):
                out[j] = p
        return out

    def remove_at(self, positions: np.ndarray) -> None:
        """Tombstone the rows at index ``positions`` (from ``find`` or ``index.live_positions``)."""
        self._check_open()
        for where in self.index.kill(np.asarray(positions, np.int64)):
            self._tombstone(where)

    def add(self, rows: Sequence[Row], embeddings: np.ndarray) -> None:
        """Stream ``rows`` and their [n, D] ``embeddings`` to the next segment."""
        self._check_open()
        if not rows:
            return
        try:
            if self._staged is None:
                (self.directory / STAGING).mkdir(exist_ok=True)
                self._staged = _Staged(self.directory, self._next, int(self.spec.dim))
                self._next += 1
            base = self._staged.n
            self._staged.append(rows, embeddings)
        except OSError as e:
            self._failed(e)
        h, c = path_keys([r.path for r in rows])
        for j, key in enumerate(zip(h.tolist(), c.tolist())):
            old = self.index.remove(key)
            if old is not None:
                self._tombstone(old)
            self.index.add(key, self._staged.seg, base + j)

    def remove(self, paths: Iterable[str]) -> None:
        """Tombstone the rows of ``paths`` (files that changed or are gone)."""
        self._check_open()
        paths = list(paths)
        h, c = path_keys(paths)
        for key in zip(h.tolist(), c.tolist()):
            old = self.index.remove(key)
            if old is not None:
                self._tombstone(old)

    def pending(self) -> bool:
        """Whether a commit would change anything but the failures and cache.json's identity."""
        return self._dirty or self._v1 is not None or (
            self._staged is not None and self._staged.n > 0)

    def _failed(self, e: OSError) -> None:
        if self._staged is not None:
            self._staged.discard()
        self._staged = None
        self.close()
        where = f" ({e.filename})" if e.filename else ""
        raise CacheWriteError(
            f"could not commit the cache {self.directory}: {e.strerror or e}{where}; the previous "
            "commit is kept and this one's partial files are removed") from None

    def commit(self, failures: Sequence[Failure] | None = None) -> None:
        """Atomically publish the staged segment, the tombstones and ``failures``."""
        self._check_open()
        if failures is not None:
            self.failures = list(failures)
        failpoints.hit("commit-begin")
        staged, self._staged = self._staged, None
        new_segments = [dict(s) for s in self._segments]
        placed: list[Path] = []
        try:
            if self._v1 is not None:
                placed += self._place_v1()
            if staged is not None and staged.n:
                staged.finish()
                failpoints.hit("commit-written")
                for src, dst in ((staged.emb, emb_path(self.directory, staged.seg)),
                                 (staged.meta, meta_path(self.directory, staged.seg))):
                    dst.parent.mkdir(exist_ok=True)
                    os.replace(src, dst)
                    placed.append(dst)
                    failpoints.hit("commit-rename")
                new_segments.append({"id": staged.seg, "rows": staged.n, "dead": staged.dead})
            elif staged is not None:
                staged.discard()
            for sub in (EMB_DIR, META_DIR):
                if (self.directory / sub).is_dir():
                    fsync_path(self.directory / sub)
            self._publish(new_segments, self.failures)
        except OSError as e:
            for p in placed:
                p.unlink(missing_ok=True)
            if staged is not None:
                self._staged = staged
            self._failed(e)
        failpoints.hit("commit-manifest")
        self._segments = new_segments
        self._dirty = False
        self._v1 = None
        self._v1_table = None
        if self.index.fresh >= _CHUNK:
            self.index.merge()  # bounded: the dict holds at most one chunk of new rows
        for name in (EMBEDDINGS, INDEX):  # format 1's files, now a segment (or dropped by --force)
            (self.directory / name).unlink(missing_ok=True)
        self._remove_orphans({s["id"] for s in self._segments})
        self._mirror_failures([_record(f) for f in self.failures])
        failpoints.hit("commit-done")
        if self._should_compact():
            self.compact()

    def _place_v1(self) -> list[Path]:
        """Format 1's embeddings.npy becomes a segment: a hard link (a copy where links fail),
        with its index.jsonl as parquet metadata. Done once, at the first commit."""
        d = self.directory
        dst = emb_path(d, self._v1)
        dst.parent.mkdir(exist_ok=True)
        meta_path(d, self._v1).parent.mkdir(exist_ok=True)
        tmp = d / STAGING / (dst.name + NEW)
        tmp.parent.mkdir(exist_ok=True)
        try:
            os.link(d / EMBEDDINGS, tmp)
        except OSError:
            shutil.copyfile(d / EMBEDDINGS, tmp)
            fsync_path(tmp)
        mtmp = d / STAGING / (meta_path(d, self._v1).name + NEW)
        _write_table_parquet(mtmp, self._v1_table)
        os.replace(tmp, dst)
        os.replace(mtmp, meta_path(d, self._v1))
        return [dst, meta_path(d, self._v1)]

    def _manifest(self, segments: list[dict[str, Any]], failures: Sequence[Failure]) -> dict[str, Any]:
        count = sum(s["rows"] - len(s["dead"]) for s in segments)
        if self.keep_meta is not None:  # a writer without the model (compact): same identity
            meta = identity_meta(self.keep_meta) | {"format_version": FORMAT_VERSION,
                                                    "count": count, "failed": len(failures)}
        else:
            meta = make_meta(self.spec, count, len(failures), self.options or {}, self.model_path,
                             self.run)
        return meta | {
            "generation": self._generation + 1,
            "next_segment": self._next,
            "segments": [{"id": s["id"], "rows": s["rows"], "dead": sorted(s["dead"])}
                         for s in segments],
            "failures": [_record(f) for f in failures],
        }

    def _publish(self, segments: list[dict[str, Any]], failures: Sequence[Failure]) -> None:
        """The commit point: cache.json replaced by one rename, after everything it names."""
        d = self.directory
        meta = self._manifest(segments, failures)
        write_bytes_durably(d / (META + TMP), (json.dumps(meta, indent=1) + "\n").encode())
        os.replace(d / (META + TMP), d / META)
        fsync_path(d)
        self._generation += 1
        self.meta = meta

    @property
    def dead_rows(self) -> int:
        return sum(len(s["dead"]) for s in self._segments)

    @property
    def stored_rows(self) -> int:
        return sum(s["rows"] for s in self._segments)

    def _should_compact(self) -> bool:
        stored = self.stored_rows
        return stored > 0 and (self.dead_rows > self.compact_dead * stored
                               or len(self._segments) > COMPACT_SEGMENTS)

    def _segment_array(self, seg: int) -> np.ndarray:
        if seg not in self._mm:
            self._mm[seg] = np.load(emb_path(self.directory, seg), mmap_mode="r")
        return self._mm[seg]

    def compact(self, chunk: int = 16384) -> None:
        """Merge every segment into one, in path order, without the dead rows.

        Streams ``chunk`` rows at a time (bounded memory); the old segments stay valid
        until the manifest naming only the new one is renamed in, then become orphans.
        """
        self._check_open()
        if self.pending() or (self._staged is not None and self._staged.dead):
            self.commit()
        failpoints.hit("compact-begin")
        pa, _ = _pyarrow()
        tables = []
        for sg in self._segments:
            keep = np.setdiff1d(np.arange(sg["rows"]), np.fromiter(sg["dead"], np.int64))
            t = _read_rows_parquet(meta_path(self.directory, sg["id"])).take(keep)
            tables.append(t.append_column("_seg", pa.array(np.full(len(keep), sg["id"], np.int32)))
                          .append_column("_loc", pa.array(keep.astype(np.int64))))
        table = _concat(tables)
        n = 0 if table is None else table.num_rows
        if n:
            order = _path_order(table)
            table = table.take(order)
        (self.directory / STAGING).mkdir(exist_ok=True)
        staged = _Staged(self.directory, self._next, int(self.spec.dim))
        self._next += 1
        try:
            for s in range(0, n, chunk):
                part = table.slice(s, chunk)
                segs, locs = part.column("_seg").to_numpy(), part.column("_loc").to_numpy()
                block = np.empty((part.num_rows, int(self.spec.dim)), np.float32)
                for seg in np.unique(segs):
                    m = segs == seg
                    block[m] = self._segment_array(int(seg))[locs[m]]
                staged.append(part.select(list(ROW_COLUMNS)), block)
        except OSError as e:
            staged.discard()
            self._failed(e)
        self._segments = []
        self._staged = staged
        self._mm = {}
        self.commit()
        if n:
            keys = table_keys(table)
            stats = table_stats(table) if self.index.stats is not None else None
            self.index = PathIndex.build(*keys, np.full(n, staged.seg, np.int32),
                                         np.arange(n, dtype=np.int64), stats)
        failpoints.hit("compact-done")


def compact(directory: str | os.PathLike[str], *, lock_timeout: float = 0.0) -> dict[str, int]:
    """``simx cache compact``: merge the segments of a cache, dropping dead rows."""
    d = Path(directory)
    state = read_state(d, table=False)

    class _Spec:  # the writer needs the cache's own identity, not a model file
        dim = int(state.meta["dim"])
        id = state.meta.get("model_id")

        @staticmethod
        def embedding_hash() -> str:
            return str(state.meta.get("spec_hash"))

    before = _disk_bytes(d)
    with CacheWriter(d, _Spec(), lock_timeout=lock_timeout, options=None) as w:
        w.keep_meta = state.meta
        segs, dead = len(w._segments), w.dead_rows
        w.compact()
        rows = w.count
    return {"rows": rows, "segments_before": segs, "dead_dropped": dead,
            "bytes_before": before, "bytes_after": _disk_bytes(d)}


def _disk_bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in d.rglob("*") if p.is_file())
