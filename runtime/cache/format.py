"""The feature cache's on-disk format: names, errors, rows, and how paths are stored.

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
automatically when dead rows pass ``COMPACT_DEAD_FRACTION``, simx.cache.merge).

Commit (cost O(rows added): nothing committed is rewritten). Rows stream to
``.staging/img_emb_N.npy.new`` as batches finish (header patched at commit), so memory
stays bounded. A commit fsyncs the staged files, renames them into ``img_emb/`` and
``metadata/`` (segment files no manifest names are invisible: orphans), then renames the
new ``cache.json``. A crash before that rename leaves the previous commit and orphans
that the next writer deletes; after it, the new commit.

Format 1 (``embeddings.npy`` + ``index.jsonl`` + ``failed.jsonl`` + ``cache.json`` with a
``commit.json`` redo log) was written only by pre-release simx. It is refused with a
``CacheError`` that says to rebuild it; ``simx embed --force`` does, and its first commit
deletes format 1's files.

Paths are absolute with their *directories* resolved (cwd, ``..`` and directory
symlinks canonicalised) but the file name kept as walked, so a symlinked image is keyed
by the name the user sees and a broken symlink is reported under its own name.

One writer at a time: ``fcntl.flock`` on ``.lock`` (never deleted, which would race).
Readers never take the lock: they check that ``cache.json`` did not change while they read.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from simx.core.errors import SimxError
from simx.core.fs import stat_fields

FORMAT = "simx-feature-cache"
FORMAT_VERSION = 2
FAILED = "failed.jsonl"
META = "cache.json"
LOCK = ".lock"
NEW = ".new"
TMP = ".tmp"
EMB_DIR = "img_emb"
META_DIR = "metadata"
STAGING = ".staging"

# Format 1's files: only to recognise such a folder and to drop its files after --force.
EMBEDDINGS = "embeddings.npy"
INDEX = "index.jsonl"
MANIFEST = "commit.json"  # format 1's redo log
DATA_FILES = (EMBEDDINGS, INDEX, FAILED, META)  # format 1's four files
FORMAT_1_LEFTOVERS = (EMBEDDINGS, INDEX, MANIFEST, MANIFEST + TMP, *(n + NEW for n in DATA_FILES))

SEG_NAME = re.compile(r"^(?:img_emb|metadata)_(\d+)\.(?:npy|parquet)$")


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


def format_1(where: object) -> CacheError:
    """The error for a folder holding a format-1 cache (no released simx wrote one)."""
    return CacheError(f"{where}: a format-1 cache written by a pre-release simx, which this simx "
                      f"does not read; {DAMAGED_HINT}")


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
        return cls(path, *stat_fields(st))

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


def jsonl(objs: Iterable[dict[str, Any]]) -> bytes:
    """JSON lines (failed.jsonl)."""
    return "".join(json.dumps(o, ensure_ascii=False) + "\n" for o in objs).encode()


def record(obj: Any) -> dict[str, Any]:
    """A Row or Failure as its JSON object: the path encoded, absent fields left out."""
    d = {k: v for k, v in asdict(obj).items() if v is not None}
    d.update(encode_path(d.pop("path")))
    return d


def _int_or_none(v: Any) -> int | None:
    return None if v is None else int(v)


def failure_from(d: dict[str, Any]) -> Failure:
    """The inverse of ``record`` for a Failure."""
    return Failure(decode_path(d), str(d["error"]), _int_or_none(d.get("size")),
                   _int_or_none(d.get("mtime_ns")))


def require_regular(p: Path) -> None:
    """Refuse a FIFO, device or folder where a cache file should be: opening a FIFO blocks."""
    try:
        st = os.stat(p)
    except FileNotFoundError:
        return
    if not stat.S_ISREG(st.st_mode):
        raise damaged(p, "not a regular file")


def emb_path(d: Path, seg: int) -> Path:
    return d / EMB_DIR / f"img_emb_{seg}.npy"


def meta_path(d: Path, seg: int) -> Path:
    return d / META_DIR / f"metadata_{seg}.parquet"


def segments_of(where: Path, meta: dict[str, Any]) -> list[dict[str, Any]]:
    """The manifest's segments as ``{"id", "rows", "dead"}`` (dead sorted, unique), or damage."""
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
