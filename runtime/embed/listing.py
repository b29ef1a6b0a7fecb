"""What to embed: the image files under local paths and URIs, with their stat, as columns.

A ``Listing`` is what a run diffs against the cache. A folder that cannot be listed hides
its rows (they are kept, not dropped), and a URI is listed through pyarrow's filesystems,
with ``st_ino = 0`` and ``st_ctime_ns = st_mtime_ns`` (object stores have neither).
"""

from __future__ import annotations

import os
import stat
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from simx.cache import Failure, Row, canonical_path
from simx.core.fs import STAT_FIELDS, stat_fields
from simx.images.decode import IMAGE_EXTENSIONS
from simx.images.uri import filesystem_of, is_uri, uri_stat



def _stat_failure(key: str, e: OSError) -> Failure:
    if isinstance(e, FileNotFoundError) and os.path.islink(key):
        return Failure(key, f"broken symbolic link (target {os.readlink(key)!r} does not exist)")
    if isinstance(e, FileNotFoundError):
        return Failure(key, "file disappeared during the run")
    return Failure(key, f"cannot stat file: {e.strerror or e}")




@dataclass
class Listing:
    """What a walk saw: files with their stat, files that fail before decoding, and places
    it could not look into (their rows must be kept, not dropped as gone).

    Files are columns, not a dict of stat results (~900 B a file): ``paths`` sorted and
    unique, and the stat fields a row records in int64 arrays aligned with them (after
    ``finish``; ``add`` appends to compact buffers meanwhile).
    """

    paths: list[str] = field(default_factory=list)
    stats: dict[str, np.ndarray] = field(default_factory=dict)
    failures: dict[str, Failure] = field(default_factory=dict)
    blind_dirs: list[str] = field(default_factory=list)
    blind_files: set[str] = field(default_factory=set)
    _buf: dict[str, array] = field(default_factory=lambda: {k: array("q") for k in STAT_FIELDS})

    def add(self, key: str, st: os.stat_result | Any) -> None:
        self.paths.append(key)
        for k, v in zip(STAT_FIELDS, stat_fields(st)):
            self._buf[k].append(v)

    def extend(self, other: Listing) -> None:
        """Add another (unfinished) listing's files, failures and blind spots."""
        self.paths.extend(other.paths)
        for k in STAT_FIELDS:
            self._buf[k].extend(other._buf[k])
        self.failures.update(other.failures)
        self.blind_dirs.extend(other.blind_dirs)
        self.blind_files |= other.blind_files

    def finish(self) -> Listing:
        """Sort by path and drop repeats (a file reached through two of the given paths),
        keeping the first stat; a path that also failed keeps only its failure."""
        cols = {k: np.frombuffer(self._buf[k], np.int64) for k in STAT_FIELDS}
        keys = np.array(self.paths, dtype=object)
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
        first = np.ones(len(keys), bool)
        first[1:] = keys[1:] != keys[:-1]
        if self.failures:
            first &= np.fromiter((k not in self.failures for k in keys), bool, len(keys))
        order = order[first]
        self.paths = keys[first].tolist()
        self.stats = {k: v[order].copy() for k, v in cols.items()}
        self._buf = {k: array("q") for k in STAT_FIELDS}
        return self

    def __len__(self) -> int:
        return len(self.paths)

    def row(self, i: int) -> Row:
        return Row(self.paths[i], *(int(self.stats[k][i]) for k in STAT_FIELDS))

    def hides(self, path: str) -> bool:
        """Whether ``path`` may exist although this walk did not see it."""
        return path in self.blind_files or any(path.startswith(d) for d in self.blind_dirs)


def scan(paths: Iterable[str | os.PathLike[str]], finish: bool = True) -> Listing:
    """Image files under ``paths``: canonical path -> stat, and files that fail before decoding.

    Stat happens before reading, so a file modified during the run is re-embedded next time.
    Anything but a regular file (a directory named .jpg, a FIFO, a device) is refused here:
    opening a FIFO would block the run forever. A folder that cannot be listed, and a file
    whose stat fails for another reason than not existing (EACCES, ENAMETOOLONG, EIO), get
    one failure line each and hide what lies under them.
    """
    from simx.images.decode import iter_images

    out = Listing()
    dirs: dict[str, str] = {}
    unreadable: list[tuple[str, OSError]] = []
    for p in iter_images(paths, errors=unreadable):
        key = canonical_path(p, dirs)
        if key in out.failures:
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
        out.add(key, st)
    for folder, e in unreadable:
        try:
            key = str(Path(folder).resolve())
        except OSError:
            key = os.path.abspath(folder)
        out.failures[key] = Failure(key, f"cannot list folder: {e.strerror or e}; "
                                         "its rows are kept until it can be read")
        out.blind_dirs.append(key.rstrip(os.sep) + os.sep)
    return out.finish() if finish else out


def scan_uris(uris: Iterable[str], finish: bool = True) -> Listing:
    """Image files under ``uris``, keyed by URI, with what ``scan`` reports for
    local paths: a URI named directly is kept whatever its suffix, a folder (prefix) is
    listed recursively for image suffixes, and one that cannot be listed hides its rows."""
    import pyarrow.fs as pafs

    out = Listing()
    for uri in uris:
        fs, root, prefix = filesystem_of(uri)
        try:
            info = fs.get_file_info(root)
            if info.type == pafs.FileType.File:
                infos = [info]
            elif info.type == pafs.FileType.Directory:
                infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
                infos = [i for i in infos if i.type == pafs.FileType.File
                         and os.path.splitext(i.base_name)[1].lower() in IMAGE_EXTENSIONS
                         and not any(part.startswith(".") for part in
                                     i.path[len(root):].split("/"))]
            else:
                out.failures[uri] = Failure(uri, "no such file or folder")
                continue
        except OSError as e:
            key = uri.rstrip("/")
            out.failures[key] = Failure(key, f"cannot list: {str(e).splitlines()[0]}; "
                                             "its rows are kept until it can be read")
            out.blind_dirs.append(key + "/")
            continue
        for i in infos:
            out.add(prefix + i.path, uri_stat(i))
    return out.finish() if finish else out


def scan_any(paths: Iterable[str | os.PathLike[str]]) -> Listing:
    """``scan`` for local paths and ``scan_uris`` for URIs, merged."""
    items = list(paths)
    uris = [str(p) for p in items if is_uri(p)]
    local = scan([p for p in items if not is_uri(p)], finish=False)
    if uris:
        local.extend(scan_uris(uris, finish=False))
    return local.finish()


