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
from typing import Any

import numpy as np

from simx.cache import FAILED, CacheWriter, Failure, identity_meta, make_meta
from simx.cache.rowindex import UNKNOWN
from simx.core import failpoints
from simx.embed.listing import Listing, scan
from simx.images.decode import IMAGE_EXTENSIONS
from simx.run.encoder import Batch, Encoder

DEFAULT_COMMIT_SECONDS = 30.0


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

    ``batches`` computes the embeddings of ``todo`` somewhere else (``simx.embed.ray_engine``: on
    a Ray cluster) instead of ``encoder.iter_embed(todo, batch_size)``; it yields Batches
    whose ``indices`` point into ``todo``, in any order. The listing, the diff against the
    cache, the commits and the failure bookkeeping stay here, in the driver. ``lister``
    replaces ``scan`` (``simx.embed.listing.scan_any``: URIs listed through pyarrow's filesystems).
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
        report.found = len(listing) + len(listing.failures)
        keep, todo_ix, report.removed = _diff(writer, listing)
        report.unchanged = keep
        state = _Run(writer, listing, todo_ix, report)
        bar = _progress_bar(progress, len(state.todo))
        t0 = time.perf_counter()
        policy = _CommitPolicy(commit_every, commit_seconds, t0)
        try:
            source = (batches(state.todo) if batches is not None
                      else encoder.iter_embed(state.todo, batch_size))
            for batch in source:
                n = state.take(batch)
                if bar is not None:
                    bar.update(n)
                failpoints.hit("batch")
                if policy.due(n) and not state.done.all():
                    policy.timed(state.commit)
        except KeyboardInterrupt:
            state.commit()  # keep what is done; a re-run continues from here
            raise
        finally:
            if bar is not None:
                bar.close()
        final_failures = state.failures_now()
        changed = (
            writer.pending()
            or final_failures != writer.failures
            or identity_meta(writer.meta) != make_meta(encoder.spec, writer.count,
                                                       len(final_failures), options, encoder.path, run)
        )
        if changed:
            state.commit()
        report.embed_seconds = time.perf_counter() - t0
        report.failures = final_failures
        report.failed = len(final_failures)
        report.rows = writer.count
    return report


def _progress_bar(progress: bool | None, total: int) -> Any:
    """A tqdm bar on stderr (by default only when stderr is a terminal), or None."""
    if progress is None:
        progress = sys.stderr.isatty()
    if not (progress and total):
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="img", desc="simx embed", file=sys.stderr, dynamic_ncols=True)


class _CommitPolicy:
    """When to commit: every ``every`` images and/or ``seconds`` seconds; the time trigger
    backs off to 10x the last commit's duration, so commits never dominate a run."""

    def __init__(self, every: int, seconds: float, start: float) -> None:
        self.every, self.seconds = every, seconds
        self.last = start
        self.cost = 0.0
        self.since = 0
        self.now = start

    def due(self, n: int) -> bool:
        self.since += n
        self.now = time.perf_counter()
        due_count = self.every > 0 and self.since >= self.every
        due_time = self.seconds > 0 and self.now - self.last >= max(self.seconds, 10 * self.cost)
        return due_count or due_time

    def timed(self, commit: Callable[[], None]) -> None:
        commit()
        self.last = time.perf_counter()
        self.cost = self.last - self.now
        self.since = 0


class _Run:
    """One run's bookkeeping between the diff and the final commit: which of ``todo`` are
    done, the failures so far, and the rows streamed to the writer."""

    def __init__(self, writer: CacheWriter, listing: Listing, todo_ix: np.ndarray,
                 report: EmbedReport) -> None:
        self.writer, self.listing, self.todo_ix, self.report = writer, listing, todo_ix, report
        self.todo = [listing.paths[i] for i in todo_ix]  # sorted: the listing is
        self.old_failed = {f.path: f for f in writer.failures}
        self.run_failures: dict[str, Failure] = dict(listing.failures)
        self.done = np.zeros(len(self.todo), bool)
        self.retried = [j for j, k in enumerate(self.todo) if k in self.old_failed]

    def failures_now(self) -> list[Failure]:
        # Not yet retried: a previously failed file keeps its old line until it is.
        out = dict(self.run_failures)
        for j in self.retried:
            if not self.done[j]:
                out.setdefault(self.todo[j], self.old_failed[self.todo[j]])
        return [out[k] for k in sorted(out)]

    def commit(self) -> None:
        self.writer.commit(self.failures_now())
        self.report.commits += 1

    def take(self, batch: Batch) -> int:
        """Stream a batch's rows to the writer and record its failures; returns how many
        of ``todo`` it settled."""
        # A non-finite row would poison every search; that file is a failure instead.
        finite = np.isfinite(batch.embeddings).all(axis=1)
        rows = [self.listing.row(int(self.todo_ix[i])) for i in batch.indices]
        self.done[list(batch.indices)] = True
        bad = [(i, "the model produced non-finite values (NaN or inf) for this image")
               for i, ok in zip(batch.indices, finite) if not ok]
        rows = [r for r, ok in zip(rows, finite) if ok]
        if rows:
            self.writer.add(rows, batch.embeddings[finite])  # streamed to disk now
        for i, err in [*batch.failures, *bad]:
            r = self.listing.row(int(self.todo_ix[i]))
            self.run_failures[self.todo[i]] = Failure(self.todo[i], err, r.size, r.mtime_ns)
            self.done[i] = True
        self.report.embedded += len(rows)
        return len(rows) + len(batch.failures) + len(bad)


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
