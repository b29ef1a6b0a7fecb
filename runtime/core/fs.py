"""File helpers: durable writes (the cache and the exporter's atomic model writer) and the
stat fields that identify a file version."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_path(path: str | os.PathLike[str]) -> None:
    """fsync a file or a folder by path (a folder's fsync makes its renames durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a folder; filesystems that refuse a folder's fsync are tolerated."""
    try:
        fsync_path(path)
    except OSError:  # pragma: no cover - e.g. some network filesystems
        pass


def write_bytes_durably(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` and fsync it before returning."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


# The stat fields a cache row keeps, in this order everywhere (row columns, listings, index).
STAT_FIELDS = ("size", "mtime_ns", "ctime_ns", "ino")


def stat_fields(st: os.stat_result) -> tuple[int, int, int, int]:
    """``st``'s STAT_FIELDS as ints (anything with st_size, st_mtime_ns, st_ctime_ns, st_ino)."""
    return int(st.st_size), int(st.st_mtime_ns), int(st.st_ctime_ns), int(st.st_ino)


def file_version(path: str | os.PathLike[str]) -> tuple[str, int, int, int]:
    """Which version of a file is there now: (path, inode, size, mtime_ns), all -1 if none.
    A file replaced by rename changes at least one of them, which is how a reader notices
    a commit that overlapped it."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return (str(path), -1, -1, -1)
    return (str(path), st.st_ino, st.st_size, st.st_mtime_ns)
