"""``simx cache compact``: merge the segments of a cache into one, dropping dead rows.

The merge itself, and when a writer compacts on its own, are simx.cache.merge."""

from __future__ import annotations

import os
from pathlib import Path

from simx.cache.reader import read_state
from simx.cache.writer import CacheWriter


def compact(directory: str | os.PathLike[str], *, lock_timeout: float = 0.0) -> dict[str, int]:
    """Compact the cache at ``directory`` (its own identity kept: no model needed)."""
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
        segs, dead = w.segment_count, w.dead_rows
        w.compact()
        rows = w.count
    return {"rows": rows, "segments_before": segs, "dead_dropped": dead,
            "bytes_before": before, "bytes_after": _disk_bytes(d)}


def _disk_bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in d.rglob("*") if p.is_file())
