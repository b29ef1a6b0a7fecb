"""The rows' metadata as Arrow tables: building them, reading and writing a segment's
parquet file, and turning columns back into paths, Rows, keys and stat arrays.

pyarrow is imported on first use (``need_pyarrow``), so that importing simx stays light.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from simx.cache.format import CacheError, Row, damaged, encode_path, require_regular
from simx.cache.rowindex import UNKNOWN, path_keys
from simx.core.fs import STAT_FIELDS, fsync_path

# The row metadata columns, in this order, in memory (a segment file may lack the optional
# ones: older writers, or no name that needed path_hex).
ROW_COLUMNS = ("path", *STAT_FIELDS, "path_hex")
_REQUIRED = ("path", "size", "mtime_ns")
CHUNK = 65536  # rows turned into Python objects at a time (bounded memory)


def need_pyarrow() -> tuple[Any, Any]:
    """``(pyarrow, pyarrow.parquet)``, or a CacheError that says how to install them."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise CacheError("simx caches keep their row metadata in parquet, which needs pyarrow: "
                         "pip install 'simx-embed[cpu]' (or pip install pyarrow)") from None
    return pa, pq


def rows_table(rows: Sequence[Row]) -> Any:
    """Row-aligned metadata as an Arrow table (path_hex only where a name is not UTF-8)."""
    pa, _ = need_pyarrow()
    enc = [encode_path(r.path) for r in rows]
    cols: dict[str, Any] = {"path": pa.array([e["path"] for e in enc], pa.string())}
    for name in STAT_FIELDS:
        cols[name] = pa.array([getattr(r, name) for r in rows], pa.int64())
    cols["path_hex"] = pa.array([e.get("path_hex") for e in enc], pa.string())
    return pa.table(cols)


def normalized(t: Any, where: object) -> Any:
    """``t`` with exactly ROW_COLUMNS (missing optional ones as nulls), or damage."""
    pa, _ = need_pyarrow()
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


def concat(tables: list[Any]) -> Any:
    """The tables one after another; None for none."""
    pa, _ = need_pyarrow()
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
    cols = [sub.column(n).to_pylist() for n in STAT_FIELDS]
    return [Row(p, *v) for p, *v in zip(table_paths(sub), *cols)]


def table_keys(t: Any) -> tuple[np.ndarray, np.ndarray]:
    """``path_keys`` of every row, turning at most CHUNK paths into strings at a time."""
    parts = [path_keys(table_paths(t, s, min(s + CHUNK, t.num_rows)))
             for s in range(0, t.num_rows, CHUNK)]
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0, np.uint32)
    return np.concatenate([h for h, _ in parts]), np.concatenate([c for _, c in parts])


def table_stats(t: Any) -> dict[str, np.ndarray]:
    """STAT_FIELDS as int64 arrays (UNKNOWN where not recorded)."""
    import pyarrow.compute as pc

    return {n: np.asarray(pc.fill_null(t.column(n), UNKNOWN).to_numpy(), np.int64)
            for n in STAT_FIELDS}


def path_order(t: Any) -> np.ndarray:
    """The permutation that sorts rows by path as Python compares str (code points: the
    order of UTF-8 bytes, which Arrow sorts by, unless a name needed path_hex)."""
    if t.column("path_hex").null_count == t.num_rows:
        import pyarrow.compute as pc

        return np.asarray(pc.sort_indices(t, sort_keys=[("path", "ascending")]), np.int64)
    paths = table_paths(t)
    return np.array(sorted(range(len(paths)), key=paths.__getitem__), np.int64)


def write_table_parquet(path: Path, table: Any) -> None:
    """A segment's metadata file, fsynced."""
    _, pq = need_pyarrow()
    if table.column("path_hex").null_count == table.num_rows:
        table = table.drop_columns(["path_hex"])  # the common case: every name is UTF-8
    # Row groups of CHUNK rows: a reader streams them (reader.segment_rows) in bounded memory.
    pq.write_table(table, str(path), compression="zstd", row_group_size=CHUNK)
    fsync_path(path)


def read_rows_parquet(path: Path) -> Any:
    """A segment's metadata as a normalized table (damage if it is not one)."""
    pa, pq = need_pyarrow()
    require_regular(path)
    try:
        t = pq.read_table(str(path))
    except pa.ArrowException as e:
        raise damaged(path, f"not a parquet file ({str(e).splitlines()[0]})") from None
    return normalized(t, path)


def iter_rows_parquet(path: Path) -> Any:
    """A segment's metadata a row group batch (CHUNK rows) at a time, normalized."""
    pa, pq = need_pyarrow()
    require_regular(path)
    try:
        for b in pq.ParquetFile(str(path)).iter_batches(batch_size=CHUNK):
            yield normalized(pa.Table.from_batches([b]), path)
    except pa.ArrowException as e:
        raise damaged(path, f"not a parquet file ({str(e).splitlines()[0]})") from None
