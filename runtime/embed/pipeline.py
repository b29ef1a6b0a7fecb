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
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from simx.core import failpoints
from simx.embed.listing import Listing, scan
from simx.cache.store import (
    FAILED,
    CacheWriter,
    Failure,
    identity_meta,
    make_meta,
)
from simx.cache.rowindex import UNKNOWN
from simx.run.encoder import Batch, Encoder
from simx.images.decode import IMAGE_EXTENSIONS

DEFAULT_COMMIT_SECONDS = 30.0
# Test-only: seconds to sleep after each batch, so a test can kill a run part way.


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
        stat_failures = listing.failures
        report.found = len(listing) + len(stat_failures)
        old_failed = {f.path: f for f in writer.failures}
        keep, todo_ix, report.removed = _diff(writer, listing)
        report.unchanged = keep
        todo = [listing.paths[i] for i in todo_ix]  # sorted: the listing is
        run_failures: dict[str, Failure] = dict(stat_failures)
        done = np.zeros(len(todo), bool)
        retried = [j for j, k in enumerate(todo) if k in old_failed]

        def failures_now() -> list[Failure]:
            # Not yet retried: a previously failed file keeps its old line until it is.
            out = dict(run_failures)
            for j in retried:
                if not done[j]:
                    out.setdefault(todo[j], old_failed[todo[j]])
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
                rows = [listing.row(int(todo_ix[i])) for i in batch.indices]
                done[list(batch.indices)] = True
                bad = [(i, "the model produced non-finite values (NaN or inf) for this image")
                       for i, ok in zip(batch.indices, finite) if not ok]
                rows = [r for r, ok in zip(rows, finite) if ok]
                if rows:
                    writer.add(rows, batch.embeddings[finite])  # streamed to disk now
                for i, err in [*batch.failures, *bad]:
                    r = listing.row(int(todo_ix[i]))
                    run_failures[todo[i]] = Failure(todo[i], err, r.size, r.mtime_ns)
                    done[i] = True
                report.embedded += len(rows)
                since_commit += len(rows) + len(batch.failures) + len(bad)
                if bar is not None:
                    bar.update(len(rows) + len(batch.failures) + len(bad))
                failpoints.hit("batch")
                now = time.perf_counter()
                due_count = commit_every > 0 and since_commit >= commit_every
                due_time = commit_seconds > 0 and now - last_commit >= max(commit_seconds,
                                                                          10 * commit_cost)
                if (due_count or due_time) and not done.all():
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
            or identity_meta(writer.meta) != make_meta(encoder.spec, writer.count,
                                                       len(final_failures), options, encoder.path, run)
        )
        if changed:
            commit()
        report.embed_seconds = time.perf_counter() - t0
        report.failures = final_failures
        report.failed = len(final_failures)
        report.rows = writer.count
    return report


def _diff(writer: CacheWriter, listing: Listing) -> tuple[int, np.ndarray, int]:
    """Compare the walk with the cache's rows; tombstone the rows of files that changed or
    are gone. Returns (rows kept, listing indices to embed, rows of files gone).

    A row is kept when its file's size, mtime_ns, ctime_ns and inode are unchanged
    (``Row.matches``; rows of older caches lack ctime and inode and compare on the rest),
    and also when the walk could not see it (an unreadable folder, a file whose stat was
    refused): unseen is not gone. Vectorized over the listing's columns.
    """
    index = writer.index
    pos = writer.find(listing.paths)
    hit = pos >= 0
    same = hit.copy()
    if hit.any() and index.stats is not None:
        old = {k: v[pos[hit]] for k, v in index.stats.items()}
        new = {k: v[hit] for k, v in listing.stats.items()}
        ok = (old["size"] == new["size"]) & (old["mtime_ns"] == new["mtime_ns"])
        for k in ("ctime_ns", "ino"):
            ok &= (old[k] == UNKNOWN) | (old[k] == new[k])
        same[hit] = ok
    seen = np.zeros(len(index.alive), bool)
    seen[pos[hit]] = True
    unseen = index.live_positions()
    unseen = unseen[~seen[unseen]]
    gone = unseen
    hidden = 0
    if len(unseen) and (listing.blind_dirs or listing.blind_files or listing.failures):
        # Rare: read the paths of the unseen rows to ask the listing about each.
        paths = writer.paths_at(unseen)
        failed = listing.failures
        mask = np.fromiter((listing.hides(p) or p in failed for p in paths), bool, len(paths))
        hides = np.fromiter((listing.hides(p) for p in paths), bool, len(paths))
        hidden = int(hides.sum())
        removed = int((~mask).sum())
        gone = unseen[~hides]
    else:
        removed = len(unseen)
    # Changed files and files gone lose their rows now (a changed file gets its new row
    # when it is re-embedded, or a failure line); rows the walk could not see stay.
    writer.remove_at(np.concatenate([pos[hit & ~same], gone]))
    return int(same.sum()) + hidden, np.flatnonzero(~same), removed
