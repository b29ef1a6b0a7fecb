"""The segment the next commit adds, streamed to ``.staging/`` as rows arrive: its .npy
(header patched with the row count at commit) and, at commit, its parquet metadata."""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from simx.cache.format import NEW, STAGING, Row
from simx.cache.tables import CHUNK, concat, rows_table, write_table_parquet


_NPY_HEADER = 128  # bytes reserved for a streamed segment's .npy header (patched at commit)


def _npy_header(n: int, dim: int) -> bytes:
    """A version-1.0 .npy header for float32 [n, dim], padded to exactly _NPY_HEADER bytes."""
    d = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + f"{n}, {dim}" + "), }"
    body = d.ljust(_NPY_HEADER - 10 - 1) + "\n"
    return b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body.encode("latin1")


class Staged:
    """The segment the next commit adds, streamed to disk as rows arrive."""

    def __init__(self, directory: Path, seg: int, dim: int) -> None:
        self.seg, self.dim = seg, dim
        self.emb = directory / STAGING / f"img_emb_{seg}.npy{NEW}"
        self.meta = directory / STAGING / f"metadata_{seg}.parquet{NEW}"
        self.fd = os.open(self.emb, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        self.size = 0
        self.n = 0  # rows appended
        self._tables: list[Any] = []  # their metadata, in order ...
        self._rows: list[Row] = []  # ... the last ones still as Rows (up to CHUNK)
        self.dead: set[int] = set()
        try:
            self._write(_npy_header(0, dim))
        except OSError:
            self.discard()
            raise

    def _write(self, data: bytes) -> None:
        # Reserve the blocks first, so a full disk fails here with ENOSPC, not later.
        try:
            os.posix_fallocate(self.fd, self.size, len(data))
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise
        view = memoryview(data)
        while view:
            k = os.pwrite(self.fd, view, self.size)
            self.size += k
            view = view[k:]

    def append(self, rows: Sequence[Row] | Any, emb: np.ndarray) -> None:
        """Append rows (Row objects, or a metadata table in ROW_COLUMNS) and their vectors."""
        n = len(rows) if isinstance(rows, Sequence) else rows.num_rows
        a = np.ascontiguousarray(emb, dtype=np.float32)
        if a.shape != (n, self.dim):
            raise ValueError(f"embeddings are {a.shape}, expected {(n, self.dim)}")
        self._write(a.tobytes())
        self.n += n
        if isinstance(rows, Sequence):
            self._rows.extend(rows)
            if len(self._rows) >= CHUNK:
                self._flush()
        else:
            self._flush()
            self._tables.append(rows)

    def _flush(self) -> None:
        if self._rows:
            self._tables.append(rows_table(self._rows))
            self._rows = []

    def finish(self) -> None:
        """Patch the header with the row count; fsync; write the metadata beside it."""
        os.pwrite(self.fd, _npy_header(self.n, self.dim), 0)
        os.fsync(self.fd)
        self.close()
        self._flush()
        write_table_parquet(self.meta, concat(self._tables))
        self._tables = []

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def discard(self) -> None:
        self.close()
        for p in (self.emb, self.meta):
            try:
                p.unlink(missing_ok=True)
            except OSError:
                pass
