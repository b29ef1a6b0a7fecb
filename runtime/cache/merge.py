"""Compaction's policy and its merge: when a writer compacts, and how the live rows of
every segment are streamed, in path order, into one new staged segment.

``CacheWriter.compact`` (simx.cache.writer) runs the merge and commits it; ``simx cache
compact`` is simx.cache.compaction.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from simx.cache.format import emb_path, meta_path
from simx.cache.staging import Staged
from simx.cache.tables import ROW_COLUMNS, concat, need_pyarrow, path_order, read_rows_parquet

# Compact when more than this fraction of the stored rows are dead, or when this many
# segments pile up. Measured at 200k x 768 (benchmarks/results/compaction_amd-epyc-2c.md):
# at 25% dead one compaction (~3 s, 75% of the bytes) costs about what one slowed full read
# costs, and compacting at 10% would rewrite 90% of the cache for a smaller slowdown; each
# segment adds ~2-3 ms to every open and commit (0.5 s at 1 segment, 1.3 s at 512, 4-6 s
# at 2048), so 256 keeps that under ~0.5 s (a 30 s commit cadence reaches it in ~2 h).
# Read at every commit (benchmarks/compaction.py raises COMPACT_SEGMENTS to let them pile up).
COMPACT_DEAD_FRACTION = 0.25
COMPACT_SEGMENTS = 256


def should_compact(segments: list[dict[str, Any]], dead_fraction: float) -> bool:
    """Whether a writer with these committed segments compacts after its commit."""
    stored = sum(s["rows"] for s in segments)
    dead = sum(len(s["dead"]) for s in segments)
    return stored > 0 and (dead > dead_fraction * stored or len(segments) > COMPACT_SEGMENTS)


def live_rows(directory: Path, segments: list[dict[str, Any]]) -> Any:
    """The live rows' metadata (ROW_COLUMNS, plus ``_seg`` and ``_loc``: where each is
    stored) sorted by path; None when there are no segments."""
    pa, _ = need_pyarrow()
    tables = []
    for sg in segments:
        keep = np.setdiff1d(np.arange(sg["rows"]), np.fromiter(sg["dead"], np.int64))
        t = read_rows_parquet(meta_path(directory, sg["id"])).take(keep)
        tables.append(t.append_column("_seg", pa.array(np.full(len(keep), sg["id"], np.int32)))
                      .append_column("_loc", pa.array(keep.astype(np.int64))))
    table = concat(tables)
    if table is not None and table.num_rows:
        table = table.take(path_order(table))
    return table


def copy_rows(directory: Path, table: Any, staged: Staged, chunk: int) -> None:
    """Append the rows of ``table`` (from ``live_rows``) and their vectors to ``staged``,
    ``chunk`` rows at a time (bounded memory)."""
    arrays: dict[int, np.ndarray] = {}  # the segments' memmaps, opened once each
    n = 0 if table is None else table.num_rows
    for s in range(0, n, chunk):
        part = table.slice(s, chunk)
        segs, locs = part.column("_seg").to_numpy(), part.column("_loc").to_numpy()
        block = np.empty((part.num_rows, staged.dim), np.float32)
        for seg in np.unique(segs):
            seg = int(seg)
            if seg not in arrays:
                arrays[seg] = np.load(emb_path(directory, seg), mmap_mode="r")
            m = segs == seg
            block[m] = arrays[seg][locs[m]]
        staged.append(part.select(list(ROW_COLUMNS)), block)
