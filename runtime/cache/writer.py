"""CacheWriter: the single writer of a cache folder. It holds the lock, recovers from an
interrupted commit, appends rows to a staged segment, tombstones rows, and commits both
by one rename of ``cache.json`` (simx.cache.format describes the commit)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from simx.cache.format import (
    EMB_DIR,
    EMBEDDINGS,
    FORMAT_VERSION,
    INDEX,
    LOCK,
    META,
    META_DIR,
    SEG_NAME,
    STAGING,
    TMP,
    CacheError,
    CacheWriteError,
    Failure,
    Row,
    emb_path,
    meta_path,
    record,
    segments_of,
)
from simx.cache.identity import check_options, check_run, check_spec, identity_meta, make_meta, run_of
from simx.cache.lock import acquire, release
from simx.cache.merge import COMPACT_DEAD_FRACTION, copy_rows, live_rows, should_compact
from simx.cache.reader import CacheState, read_state
from simx.cache.recovery import clear_special, drop_format_1, mirror_failures, recover, remove_orphans
from simx.cache.rowindex import PathIndex, path_keys
from simx.cache.staging import Staged
from simx.cache.tables import CHUNK, read_rows_parquet, table_keys, table_paths, table_stats
from simx.core import failpoints
from simx.core.fs import fsync_path, write_bytes_durably


class CacheWriter:
    """The single writer of a cache folder: holds the lock, recovers, appends, commits.

    Opening it takes the lock (waiting up to ``lock_timeout`` seconds; 0 fails at once,
    a negative value waits forever), discards what an interrupted commit left, and
    loads the committed state. A cache whose spec hash differs from ``spec`` is refused
    unless ``force``, which starts from an empty state (the old files are dropped at the
    first commit, so an interrupted ``--force`` run leaves the old cache intact). So is a
    damaged cache, and a format-1 cache (written by a pre-release simx).

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
        self._staged: Staged | None = None
        # Segment files without a cache.json are a crashed first commit if a simx writer
        # held this folder (its .lock is there), else another tool's shards: not ours.
        self._ours = (self.directory / LOCK).exists() or (self.directory / META).exists()
        clear_special(self.directory, force)
        self._lock_fd = acquire(self.directory, lock_timeout)
        try:
            recover(self.directory, self._ours)
            self._init_from(self._load(force))
        except BaseException:
            self.close()
            raise

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
            fd, self._lock_fd = self._lock_fd, None
            release(fd)

    def __enter__(self) -> CacheWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _load(self, force: bool) -> CacheState:
        """The committed state, checked against this writer's model, options and precision;
        empty (a rebuild) under ``force`` where it is damaged, format 1 or another's."""
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
            state = read_state(d, table=False)
            self._check_identity(state.meta)
        except CacheError:  # damaged, format 1, or made otherwise (CacheMismatchError)
            if force:
                return empty
            raise
        return state

    def _check_identity(self, meta: dict[str, Any]) -> None:
        """Refuse a cache of another model, options or precision; adopt the cache's options
        and run where this writer brought none."""
        check_spec(self.directory, meta, self.spec)
        if self.options is None:
            self.options = dict(meta.get("options", {}))
        else:
            check_options(self.directory, meta, self.options)
        if self.run is None:
            self.run = run_of(meta)
        else:
            check_run(self.directory, meta, self.run)

    def _init_from(self, state: CacheState) -> None:
        """The writer's own view: live rows and where they are, segments and their tombstones."""
        d = self.directory
        self.meta = state.meta
        self.failures: list[Failure] = list(state.failures)
        ids = {int(m.group(1)) for sub in (EMB_DIR, META_DIR) if (d / sub).is_dir()
               for p in (d / sub).iterdir() if (m := SEG_NAME.match(p.name))}
        self._segments: list[dict[str, Any]] = [
            {"id": s["id"], "rows": s["rows"], "dead": set(s["dead"])}
            for s in segments_of(d / META, state.meta)] if state.meta else []
        ids |= {s["id"] for s in self._segments}
        ids.add(int(state.meta.get("next_segment", 0)) - 1)
        self._next = max(ids, default=-1) + 1
        self._generation = int(state.meta.get("generation", 0))
        # The live rows by path, with the stat each was embedded from (the re-run's diff).
        # A table of 1M rows is ~100 MB of Arrow buffers: dropped once indexed.
        stats, state.stats = (state.stats if state.count else None), None
        keys, state.keys = state.keys, ()
        self.index = PathIndex.build(*keys, state.seg, state.loc, stats)  # owns the arrays now
        self._dirty = False

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
            t = read_rows_parquet(meta_path(self.directory, int(sg)))
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
                self._staged = self._new_staged()
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

    def _new_staged(self) -> Staged:
        """The next segment, staged (its id taken whether or not it is ever committed)."""
        (self.directory / STAGING).mkdir(exist_ok=True)
        staged = Staged(self.directory, self._next, int(self.spec.dim))
        self._next += 1
        return staged

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
        return self._dirty or (self._staged is not None and self._staged.n > 0)

    def _failed(self, e: OSError) -> None:
        if self._staged is not None:
            self._staged.discard()
        self._staged = None
        self.close()
        where = f" ({e.filename})" if e.filename else ""
        raise CacheWriteError(
            f"could not commit the cache {self.directory}: {e.strerror or e}{where}; the previous "
            "commit is kept and this one's partial files are removed") from None

    # -- commit --------------------------------------------------------------------------
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
            if staged is not None and staged.n:
                self._place(staged, placed)
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
        self._tidy()
        failpoints.hit("commit-done")
        if should_compact(self._segments, self.compact_dead):
            self.compact()

    def _place(self, staged: Staged, placed: list[Path]) -> None:
        """Finish the staged segment and rename its files into place (listed in ``placed``
        as they land, for the caller to remove if the commit fails)."""
        staged.finish()
        failpoints.hit("commit-written")
        for src, dst in ((staged.emb, emb_path(self.directory, staged.seg)),
                         (staged.meta, meta_path(self.directory, staged.seg))):
            dst.parent.mkdir(exist_ok=True)
            os.replace(src, dst)
            placed.append(dst)
            failpoints.hit("commit-rename")

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
            "failures": [record(f) for f in failures],
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

    def _tidy(self) -> None:
        """After a commit: bound the index's dict, drop what the commit made unreachable
        (orphan segments, a format-1 cache that --force replaced), mirror the failures."""
        if self.index.fresh >= CHUNK:
            self.index.merge()  # bounded: the dict holds at most one chunk of new rows
        drop_format_1(self.directory)
        remove_orphans(self.directory, {s["id"] for s in self._segments})
        mirror_failures(self.directory, [record(f) for f in self.failures])

    @property
    def segment_count(self) -> int:
        """Committed segments."""
        return len(self._segments)

    @property
    def dead_rows(self) -> int:
        """Committed rows tombstoned (what a compaction drops)."""
        return sum(len(s["dead"]) for s in self._segments)

    # -- compaction ----------------------------------------------------------------------
    def compact(self, chunk: int = 16384) -> None:
        """Merge every segment into one, in path order, without the dead rows.

        Streams ``chunk`` rows at a time (bounded memory); the old segments stay valid
        until the manifest naming only the new one is renamed in, then become orphans.
        """
        self._check_open()
        if self.pending() or (self._staged is not None and self._staged.dead):
            self.commit()
        failpoints.hit("compact-begin")
        table = live_rows(self.directory, self._segments)
        try:
            staged = self._new_staged()
        except OSError as e:
            self._failed(e)
        try:
            copy_rows(self.directory, table, staged, chunk)
        except OSError as e:
            staged.discard()
            self._failed(e)
        self._segments = []
        self._staged = staged
        self.commit()
        if table is not None and table.num_rows:
            n = table.num_rows
            stats = table_stats(table) if self.index.stats is not None else None
            self.index = PathIndex.build(*table_keys(table), np.full(n, staged.seg, np.int32),
                                         np.arange(n, dtype=np.int64), stats)
        failpoints.hit("compact-done")
