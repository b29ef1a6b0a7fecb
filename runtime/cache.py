"""The feature cache: a folder numpy and a JSON reader can use without simx.

Files (all rows in canonical order: sorted by path):
- ``embeddings.npy``  float32 [N, D]; ``np.load(path, mmap_mode="r")`` works;
- ``index.jsonl``     one ``{"path", "size", "mtime_ns"}`` per row of embeddings.npy;
- ``failed.jsonl``    one ``{"path", "error", ...}`` per file that could not be embedded;
- ``cache.json``      format, model id, spec hash, dim, count, failed, simx version.

Paths are absolute with their *directories* resolved (cwd, ``..`` and directory
symlinks canonicalised) but the file name kept as walked, so a symlinked image is keyed
by the name the user sees and a broken symlink is reported under its own name.

Crash safety. Four files must change together, and a rename is atomic for one file
only, so a commit is a tiny redo log:
1. write every new file as ``NAME.new``, fsync each;
2. write ``commit.json`` (the manifest naming the files) via a temp file, fsync, rename,
   fsync the folder: *this rename is the commit point*;
3. rename each ``NAME.new`` over ``NAME``, fsync the folder;
4. remove ``commit.json``.
Whoever next takes the write lock first finishes a pending manifest's renames (redo),
then deletes stray ``*.new``/``*.tmp`` files of an uncommitted write. A crash before (2)
leaves the previous commit; a crash after (2) leaves the new one. Readers never take the
lock: they resolve a pending manifest themselves and check that the files agree.

One writer at a time: ``fcntl.flock`` on ``.lock`` (never deleted, which would race).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import stat
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import SimxError
from .fsutil import fsync_path, write_bytes_durably

try:  # POSIX only; readers work without it (Windows), writers say why they cannot lock
    import fcntl
except ImportError:  # pragma: no cover - exercised by a subprocess test
    fcntl = None  # type: ignore[assignment]

FORMAT = "simx-feature-cache"
FORMAT_VERSION = 1
EMBEDDINGS = "embeddings.npy"
INDEX = "index.jsonl"
FAILED = "failed.jsonl"
META = "cache.json"
DATA_FILES = (EMBEDDINGS, INDEX, FAILED, META)
MANIFEST = "commit.json"
LOCK = ".lock"
NEW = ".new"
TMP = ".tmp"


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


def canonical_path(p: str | os.PathLike[str], dirs: dict[str, str] | None = None) -> str:
    """The key a file has in the cache: absolute, directories resolved, name kept.

    ``dirs`` memoizes resolved folders during one walk (resolving costs a few syscalls
    per path component, and a folder holds many files).
    """
    parent, name = os.path.split(os.path.abspath(os.fspath(p)))
    if dirs is None:
        return os.path.join(str(Path(parent).resolve()), name)
    if parent not in dirs:
        dirs[parent] = str(Path(parent).resolve())
    return os.path.join(dirs[parent], name)


# ----------------------------------------------------------------------------- test hook
# SIMX_TEST_CRASH="POINT:N" makes the process SIGKILL itself the Nth time it reaches
# POINT. Test-only: it is how the crash tests kill a run at every step of a commit.
_CRASH = os.environ.get("SIMX_TEST_CRASH", "")
_crash_hits: dict[str, int] = {}


def crash_point(name: str) -> None:
    if not _CRASH:
        return
    point, _, n = _CRASH.partition(":")
    if point != name:
        return
    _crash_hits[name] = _crash_hits.get(name, 0) + 1
    if _crash_hits[name] >= int(n or 1):
        os.kill(os.getpid(), signal.SIGKILL)


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
    rows: list[Row]
    failures: list[Failure]
    embeddings: np.ndarray  # read-only memmap [N, D]
    identity: tuple = ()  # (path, inode, size, mtime_ns) of each file read: new at every commit


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


def _read_once(d: Path) -> CacheState:
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
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise CacheError(f"{d}: cache format {meta['format_version']} is newer than this simx; upgrade")
    for key in ("count", "dim"):
        if not isinstance(meta.get(key), int) or isinstance(meta.get(key), bool) or meta[key] < 0:
            raise damaged(files[META], f"{key} is {meta.get(key)!r}, not a count")
    rows = [_row_from(r) for r in _read_jsonl(files[INDEX])]
    _check_sorted([r.path for r in rows], files[INDEX])
    failures = [_failure_from(r) for r in _read_jsonl(files[FAILED])]
    emb = np.load(files[EMBEDDINGS], mmap_mode="r", allow_pickle=False)
    if not isinstance(emb, np.ndarray):
        raise damaged(files[EMBEDDINGS], f"a {type(emb).__name__}, not one .npy array")
    if emb.dtype != np.float32 or emb.ndim != 2:
        raise damaged(files[EMBEDDINGS], f"{emb.dtype} {emb.shape}, not float32 [N, D]")
    return CacheState(meta, rows, failures, emb)


def _consistent(s: CacheState) -> bool:
    n, dim = s.meta["count"], s.meta["dim"]
    return len(s.rows) == n == s.embeddings.shape[0] and s.embeddings.shape[1] == dim


def read_state(d: str | os.PathLike[str], retries: int = 3,
               race_timeout: float = 10.0) -> CacheState:
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
            s = _read_once(d)
            if _consistent(s):
                return s
            bad_reads += 1
        except _Raced:  # a commit overlapped the read
            if time.monotonic() > deadline:
                raise CacheError(f"{d}: could not read a stable state for {race_timeout:g} s "
                                 "(a writer commits continuously?)") from None
        if bad_reads >= retries:
            raise damaged(d, "its files disagree: the row counts differ")
        time.sleep(0.01)


class FeatureCache:
    """Read access to a cache folder that ``simx embed`` wrote.

    ``embeddings`` is a read-only memmap [N, D]; row i belongs to ``paths[i]``.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        s = read_state(self.directory)
        self.meta: dict[str, Any] = s.meta
        self.rows: list[Row] = s.rows
        self.failures: list[Failure] = s.failures
        self.embeddings: np.ndarray = s.embeddings
        self.paths: list[str] = [r.path for r in s.rows]
        self._row = {p: i for i, p in enumerate(self.paths)}
        # Every commit replaces all four files by rename, so their inodes and mtimes name
        # the commit: what a derived file (the FAISS index) is keyed on.
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
    from . import __version__

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


def _preallocate(path: Path) -> None:
    """Reserve a file's blocks now, so a full disk fails here with ENOSPC."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
    finally:
        os.close(fd)


def _flags(options: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in options.items()) or "default options"


class CacheWriter:
    """The single writer of a cache folder: holds the lock, recovers, commits atomically.

    Opening it takes the lock (waiting up to ``lock_timeout`` seconds; 0 fails at once,
    a negative value waits forever), finishes or discards any interrupted commit, and
    loads the committed state. A cache whose spec hash differs from ``spec`` is refused
    unless ``force``, which starts from an empty state (the old files are replaced at
    the first commit, so an interrupted ``--force`` run leaves the old cache intact).
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
        run: dict[str, str] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.spec = spec
        self.model_path = model_path
        self.run = run  # provider and precision of the rows this writer adds (None: the cache's)
        # None: keep the cache's own options (a writer that only rewrites rows).
        self.options = None if options is None else dict(sorted(options.items()))
        if self.directory.exists() and not self.directory.is_dir():
            raise CacheError(f"cache path {self.directory} exists and is not a folder")
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd: int | None = None
        self._clear_special(force)
        self._lock(lock_timeout)
        try:
            self.recover()
            self.state = self._load(force)
        except BaseException:
            self.close()
            raise

    def _clear_special(self, force: bool) -> None:
        """A folder, FIFO or device where a cache file belongs: damage, removed by --force."""
        d = self.directory
        names = (LOCK, MANIFEST, MANIFEST + TMP, *DATA_FILES, *(n + NEW for n in DATA_FILES))
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
        if force:
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
        """Finish a commit whose manifest was written (redo), then drop uncommitted temp files."""
        d = self.directory
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

    def _load(self, force: bool) -> CacheState:
        d = self.directory
        empty = CacheState({}, [], [], np.zeros((0, int(self.spec.dim)), np.float32))
        if not (d / META).exists():
            leftovers = [n for n in DATA_FILES if (d / n).exists()]
            if leftovers and not force:
                raise CacheError(
                    f"{d} holds {', '.join(leftovers)} but no {META}; not a simx cache "
                    "(use --force to overwrite, or pick another folder)"
                )
            return empty
        try:
            state = read_state(d, retries=1)
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

    # -- commit --------------------------------------------------------------------------
    def commit(
        self,
        rows: Sequence[Row],
        failures: Sequence[Failure],
        fill_embeddings: Callable[[np.ndarray], None] | np.ndarray,
    ) -> CacheState:
        """Atomically replace the cache with ``rows`` (and their embeddings) and ``failures``.

        ``fill_embeddings`` is the [N, D] array in row order, or a function that fills the
        writable [N, D] memmap it is given (so a large cache is merged without a copy in RAM).
        Returns the new committed state (its embeddings memmap the new file).
        """
        if self._lock_fd is None:
            raise CacheError("the cache writer is closed")
        d = self.directory
        n, dim = len(rows), int(self.spec.dim)
        # A commit interrupted in this process (Ctrl-C) may have left a manifest; finish it
        # before overwriting any NAME.new it names.
        self.recover()
        crash_point("commit-begin")
        try:
            self._write_new(rows, failures, fill_embeddings, n, dim)
            meta = make_meta(self.spec, n, len(failures), self.options or {}, self.model_path,
                             self.run)
            write_bytes_durably(d / (META + NEW), (json.dumps(meta, indent=2) + "\n").encode())
            fsync_path(d)  # the .new names are durable before the manifest that names them
            crash_point("commit-written")
            # The commit point: the manifest appears atomically, after everything it names.
            write_bytes_durably(d / (MANIFEST + TMP), json.dumps({"files": list(DATA_FILES)}).encode())
            os.replace(d / (MANIFEST + TMP), d / MANIFEST)
        except OSError as e:
            self._discard_new()
            where = f" ({e.filename})" if e.filename else ""
            raise CacheWriteError(
                f"could not commit the cache {d}: {e.strerror or e}{where}; the previous "
                "commit is kept and this one's partial files are removed") from None
        fsync_path(d)
        crash_point("commit-manifest")
        for name in DATA_FILES:
            os.replace(d / (name + NEW), d / name)
            crash_point("commit-rename")
        fsync_path(d)
        (d / MANIFEST).unlink()
        fsync_path(d)
        crash_point("commit-done")
        self.state = CacheState(meta, list(rows), list(failures),
                                np.load(d / EMBEDDINGS, mmap_mode="r"))
        return self.state

    def _write_new(self, rows: Sequence[Row], failures: Sequence[Failure],
                   fill_embeddings: Callable[[np.ndarray], None] | np.ndarray, n: int, dim: int) -> None:
        """Write and fsync every NAME.new of a commit but cache.json's."""
        d = self.directory
        emb_new = d / (EMBEDDINGS + NEW)
        if n == 0:
            with open(emb_new, "wb") as f:
                np.save(f, np.zeros((0, dim), np.float32))
                f.flush()
                os.fsync(f.fileno())
        else:
            mm = np.lib.format.open_memmap(emb_new, mode="w+", dtype=np.float32, shape=(n, dim))
            _preallocate(emb_new)  # a sparse file mapped on a full disk dies of SIGBUS
            if callable(fill_embeddings):
                fill_embeddings(mm)
            else:
                arr = np.asarray(fill_embeddings, dtype=np.float32)
                if arr.shape != (n, dim):
                    raise ValueError(f"embeddings are {arr.shape}, expected {(n, dim)}")
                mm[:] = arr
            mm.flush()
            del mm
            with open(emb_new, "rb+") as f:
                os.fsync(f.fileno())
        write_bytes_durably(d / (INDEX + NEW), _jsonl(_record(r) for r in rows))
        write_bytes_durably(d / (FAILED + NEW), _jsonl(_record(f) for f in failures))

    def _discard_new(self) -> None:
        """Remove an uncommitted commit's files, so they do not hold disk space."""
        for name in (*(n + NEW for n in DATA_FILES), MANIFEST + TMP):
            try:
                (self.directory / name).unlink(missing_ok=True)
            except OSError:
                pass
