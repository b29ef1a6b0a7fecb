"""``simx embed``'s engine: walk, diff against the cache, embed what changed, commit.

A run leaves the cache equal to a clean run over the current files:
- a file whose size and mtime_ns match its row is kept (never embedded twice);
- new and changed files, and every previously failed file, are embedded;
- rows of files that are gone are dropped;
- bad files never stop the run: each gets one line in failed.jsonl.

Rows stream to the cache's next segment as batches finish (memory stays bounded); it
commits every ``commit_every`` images and/or ``commit_seconds`` seconds (a commit costs
O(rows added); the time trigger still backs off to 10x the last commit's duration), so
a kill -9 loses at most the work since the last commit.
Ctrl-C commits what is done before stopping.
"""

from __future__ import annotations

import os
import stat
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .cache import FAILED, CacheWriter, Failure, Row, canonical_path, crash_point, identity_meta, make_meta
from .encoder import Batch, Encoder
from .image import IMAGE_EXTENSIONS

DEFAULT_COMMIT_SECONDS = 30.0
# Test-only: seconds to sleep after each batch, so a test can kill a run part way.
_TEST_DELAY = float(os.environ.get("SIMX_TEST_DELAY", "0") or 0)


@dataclass
class EmbedReport:
    """What one run did; ``summary()`` is the line ``simx embed`` prints."""

    cache_dir: Path
    embedded: int = 0
    unchanged: int = 0
    removed: int = 0
    failed: int = 0
    rows: int = 0
    commits: int = 0
    embed_seconds: float = 0.0
    providers: list[str] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    found: int = 0  # files the walk found (images or not, readable or not)

    @property
    def img_per_s(self) -> float:
        return self.embedded / self.embed_seconds if self.embed_seconds > 0 else 0.0

    def notes(self, show: int = 5) -> list[str]:
        """What the console adds to the summary: the first failures and where the rest are,
        or a warning that nothing was found at all."""
        out = []
        if self.failures:
            for f in self.failures[:show]:
                out.append(f"failed: {f.path}: {f.error}")
            more = len(self.failures) - show
            out.append((f"... and {more} more; " if more > 0 else "")
                       + f"every failure is listed in {self.cache_dir / FAILED}")
        if self.found == 0:
            out.append("warning: no image files found under the given paths "
                       f"(looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
        return out

    def summary(self) -> str:
        return (
            f"embedded {self.embedded}, unchanged {self.unchanged}, removed {self.removed}, "
            f"failed {self.failed}; {self.img_per_s:.1f} img/s; "
            f"providers {','.join(self.providers)}; cache {self.cache_dir} ({self.rows} rows)"
        )


def _stat_failure(key: str, e: OSError) -> Failure:
    if isinstance(e, FileNotFoundError) and os.path.islink(key):
        return Failure(key, f"broken symbolic link (target {os.readlink(key)!r} does not exist)")
    if isinstance(e, FileNotFoundError):
        return Failure(key, "file disappeared during the run")
    return Failure(key, f"cannot stat file: {e.strerror or e}")


@dataclass
class Listing:
    """What a walk saw: files with their stat, files that fail before decoding, and places
    it could not look into (their rows must be kept, not dropped as gone)."""

    files: dict[str, os.stat_result] = field(default_factory=dict)
    failures: dict[str, Failure] = field(default_factory=dict)
    blind_dirs: list[str] = field(default_factory=list)
    blind_files: set[str] = field(default_factory=set)

    def hides(self, path: str) -> bool:
        """Whether ``path`` may exist although this walk did not see it."""
        return path in self.blind_files or any(path.startswith(d) for d in self.blind_dirs)


def scan(paths: Iterable[str | os.PathLike[str]]) -> Listing:
    """Image files under ``paths``: canonical path -> stat, and files that fail before decoding.

    Stat happens before reading, so a file modified during the run is re-embedded next time.
    Anything but a regular file (a directory named .jpg, a FIFO, a device) is refused here:
    opening a FIFO would block the run forever. A folder that cannot be listed, and a file
    whose stat fails for another reason than not existing (EACCES, ENAMETOOLONG, EIO), get
    one failure line each and hide what lies under them.
    """
    from .image import find_images

    out = Listing()
    dirs: dict[str, str] = {}
    unreadable: list[tuple[str, OSError]] = []
    for p in find_images([Path(x) for x in paths], errors=unreadable):
        key = canonical_path(p, dirs)
        if key in out.files or key in out.failures:
            continue
        try:
            st = os.stat(key)
        except OSError as e:
            out.failures[key] = _stat_failure(key, e)
            if not isinstance(e, FileNotFoundError):
                out.blind_files.add(key)
            continue
        if not stat.S_ISREG(st.st_mode):
            kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            out.failures[key] = Failure(key, f"{kind} (only regular image files are embedded)")
            continue
        out.files[key] = st
    for folder, e in unreadable:
        try:
            key = str(Path(folder).resolve())
        except OSError:
            key = os.path.abspath(folder)
        out.failures[key] = Failure(key, f"cannot list folder: {e.strerror or e}; "
                                         "its rows are kept until it can be read")
        out.blind_dirs.append(key.rstrip(os.sep) + os.sep)
    return out


def embed_into_cache(
    paths: Iterable[str | os.PathLike[str]],
    encoder: Encoder,
    cache_dir: str | os.PathLike[str],
    *,
    batch_size: int | None = None,
    force: bool = False,
    lock_timeout: float = 0.0,
    commit_every: int = 0,
    commit_seconds: float = DEFAULT_COMMIT_SECONDS,
    progress: bool | None = None,
    batches: Callable[[list[str]], Iterable[Batch]] | None = None,
    lister: Callable[[Iterable[str | os.PathLike[str]]], Listing] | None = None,
) -> EmbedReport:
    """Bring the cache at ``cache_dir`` up to date with the image files under ``paths``.

    ``batches`` computes the embeddings of ``todo`` somewhere else (``simx.ray_engine``: on
    a Ray cluster) instead of ``encoder.iter_embed(todo, batch_size)``; it yields Batches
    whose ``indices`` point into ``todo``, in any order. The listing, the diff against the
    cache, the commits and the failure bookkeeping stay here, in the driver. ``lister``
    replaces ``scan`` (``simx.uri.scan_any``: URIs listed through pyarrow's filesystems).
    Everything else (diff, streaming to the cache, commits, crash safety) stays here, so
    every engine writes the same cache.
    """
    cache_dir = Path(cache_dir)
    report = EmbedReport(cache_dir=cache_dir, providers=encoder.providers)
    options = {"fast": bool(encoder.fast), "exif_transpose": bool(encoder.exif_transpose)}
    run = {"provider": getattr(encoder, "provider", "cpu"),
           "precision": getattr(encoder, "precision", encoder.spec.precision)}
    with CacheWriter(cache_dir, encoder.spec, force=force, lock_timeout=lock_timeout,
                     options=options, model_path=encoder.path, run=run) as writer:
        listing = (lister or scan)(paths)
        files, stat_failures = listing.files, listing.failures
        report.found = len(files) + len(stat_failures)
        old_rows = dict(writer.rows)
        old_failed = {f.path: f for f in writer.failures}
        # Rows we cannot see this run (an unreadable folder, a file stat refused) are kept:
        # unseen is not gone.
        unseen = {p for p in old_rows if listing.hides(p)}
        walked = set(files) | set(stat_failures) | unseen
        unchanged = unseen | {
            k for k, st in files.items()
            if (r := old_rows.get(k)) is not None and r.matches(st)
        }
        todo = sorted(k for k in files if k not in unchanged)
        report.unchanged = len(unchanged)
        report.removed = sum(1 for p in old_rows if p not in walked)
        # Rows of files that changed or are gone are tombstoned at the first commit (a
        # changed file gets its new row when it is re-embedded, or a failure line).
        writer.remove([p for p in old_rows if p not in unchanged])
        run_failures: dict[str, Failure] = dict(stat_failures)
        done: set[str] = set()

        def failures_now() -> list[Failure]:
            # Not yet retried: a previously failed file keeps its old line until it is.
            out = dict(run_failures)
            for k in todo:
                if k not in done and k in old_failed:
                    out.setdefault(k, old_failed[k])
            return [out[k] for k in sorted(out)]

        def commit() -> None:
            writer.commit(failures_now())
            report.commits += 1

        bar = None
        if progress is None:
            progress = sys.stderr.isatty()
        if progress and todo:
            from tqdm import tqdm

            bar = tqdm(total=len(todo), unit="img", desc="simx embed", file=sys.stderr,
                       dynamic_ncols=True)
        t0 = last_commit = time.perf_counter()
        commit_cost = 0.0
        since_commit = 0
        try:
            source = (batches(todo) if batches is not None
                      else encoder.iter_embed(todo, batch_size))
            for batch in source:
                # A non-finite row would poison every search; that file is a failure instead.
                finite = np.isfinite(batch.embeddings).all(axis=1)
                rows = []
                for i in batch.indices:
                    rows.append(Row.of(todo[i], files[todo[i]]))
                    done.add(todo[i])
                bad = [(i, "the model produced non-finite values (NaN or inf) for this image")
                       for i, ok in zip(batch.indices, finite) if not ok]
                rows = [r for r, ok in zip(rows, finite) if ok]
                if rows:
                    writer.add(rows, batch.embeddings[finite])  # streamed to disk now
                for i, err in [*batch.failures, *bad]:
                    st = files[todo[i]]
                    run_failures[todo[i]] = Failure(todo[i], err, int(st.st_size),
                                                    int(st.st_mtime_ns))
                    done.add(todo[i])
                report.embedded += len(rows)
                since_commit += len(rows) + len(batch.failures) + len(bad)
                if bar is not None:
                    bar.update(len(rows) + len(batch.failures) + len(bad))
                crash_point("batch")
                if _TEST_DELAY:
                    time.sleep(_TEST_DELAY)
                now = time.perf_counter()
                due_count = commit_every > 0 and since_commit >= commit_every
                due_time = commit_seconds > 0 and now - last_commit >= max(commit_seconds,
                                                                          10 * commit_cost)
                if (due_count or due_time) and len(done) < len(todo):
                    commit()
                    last_commit = time.perf_counter()
                    commit_cost = last_commit - now
                    since_commit = 0
        except KeyboardInterrupt:
            commit()  # keep what is done; a re-run continues from here
            raise
        finally:
            if bar is not None:
                bar.close()
        final_failures = failures_now()
        changed = (
            writer.pending()
            or final_failures != writer.failures
            or identity_meta(writer.meta) != make_meta(encoder.spec, len(writer.rows),
                                                       len(final_failures), options, encoder.path, run)
        )
        if changed:
            commit()
        report.embed_seconds = time.perf_counter() - t0
        report.failures = final_failures
        report.failed = len(final_failures)
        report.rows = len(writer.rows)
    return report
