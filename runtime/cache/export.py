"""``simx cache export``: a feature cache as one file, for people and tools that want one.

Rows are written in path order, so an export does not depend on how the cache's commits
cut it into segments. ``npy`` holds the float32 [N, D] rows only (the paths are
``sorted(FeatureCache(dir).paths)``); ``parquet`` holds each row's path and stat beside its
``embedding`` (a fixed-size list of D float32), the layout embedding-reader's ``parquet``
format reads. Both stream a chunk of rows at a time and appear by an atomic rename.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from simx.cache.format import CacheError
from simx.cache.reader import FeatureCache
from simx.cache.tables import need_pyarrow, rows_table
from simx.core.fs import fsync_path

FORMATS = ("npy", "parquet")
CHUNK = 16384


def export_cache(directory: str | os.PathLike[str], fmt: str, out: str | os.PathLike[str]) -> int:
    """Write the live rows of the cache at ``directory`` to ``out``; returns the row count."""
    if fmt not in FORMATS:
        raise CacheError(f"unknown export format {fmt!r}; choose {' or '.join(FORMATS)}")
    out = Path(out)
    if out.is_dir():
        raise CacheError(f"{out} is a folder; give the file to write")
    if not out.parent.is_dir():
        raise CacheError(f"no folder {out.parent} to write {out.name} into")
    fc = FeatureCache(directory)
    order = sorted(range(len(fc)), key=fc.paths.__getitem__)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        if fmt == "npy":
            _npy(fc, order, tmp)
        else:
            _parquet(fc, order, tmp)
        fsync_path(tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return len(order)


def _npy(fc: FeatureCache, order: list[int], tmp: Path) -> None:
    mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(order), fc.dim))
    for s in range(0, len(order), CHUNK):
        mm[s:s + CHUNK] = fc.embeddings[np.asarray(order[s:s + CHUNK], np.int64)]
    mm.flush()
    del mm


def _parquet(fc: FeatureCache, order: list[int], tmp: Path) -> None:
    pa, pq = need_pyarrow()
    writer = None
    try:
        for s in range(0, max(len(order), 1), CHUNK):
            idx = order[s:s + CHUNK]
            t = fc.table.take(np.asarray(idx, np.int64)) if idx else rows_table([])
            if "path_hex" not in t.column_names:  # one schema for every row group
                t = t.append_column("path_hex", pa.nulls(len(idx), pa.string()))
            emb = np.ascontiguousarray(fc.embeddings[np.asarray(idx, np.int64)], np.float32)
            flat = pa.array(emb.reshape(-1), pa.float32())
            t = t.append_column("embedding", pa.FixedSizeListArray.from_arrays(flat, fc.dim))
            if writer is None:
                writer = pq.ParquetWriter(str(tmp), t.schema, compression="zstd")
            writer.write_table(t)
    finally:
        if writer is not None:
            writer.close()
