"""Images named by URI (``file://``, ``s3://``, ``gs://``, ``hdfs://``), for the Ray engine.

Local paths stay what they are everywhere in simx. A URI is listed and read through
``pyarrow.fs.FileSystem.from_uri``, so every scheme pyarrow knows goes through this same
code: the tests use ``file://``, and ``s3://`` / ``gs://`` differ only in the filesystem
object pyarrow returns (credentials come from the environment, as pyarrow reads them).

- The cache row is keyed by the URI itself (``s3://bucket/a/b.jpg``), so a cache filled from
  a bucket is re-run against the bucket, and the diff works as for local files.
- Size and mtime come from pyarrow's FileInfo. Object stores have no inode or ctime, so a
  URI's stat carries ``st_ino = 0`` and ``st_ctime_ns = st_mtime_ns``: the row then
  changes exactly when size or mtime change.
- Workers read the bytes with pyarrow and decode them with simx's own ``load_rgb`` (through
  a temporary file), so a URI gets exactly the pixels, and the failure lines, of a local
  file with the same bytes.
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simx.core.errors import SimxError
from simx.images.decode import ImageError

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_uri(key: str | os.PathLike[str]) -> bool:
    """Whether ``key`` is a URI (``scheme://...``) rather than a local path."""
    return isinstance(key, str) and bool(_SCHEME.match(key))


@dataclass(frozen=True)
class UriStat:
    """The part of an ``os.stat_result`` a cache row records, from a pyarrow FileInfo."""

    st_size: int
    st_mtime_ns: int
    st_ctime_ns: int
    st_ino: int = 0
    st_mode: int = stat.S_IFREG


def filesystem_of(uri: str) -> tuple[Any, str, str]:
    """(pyarrow filesystem, path inside it, the prefix that turns such a path back into a URI)."""
    import pyarrow.fs as pafs

    try:
        fs, path = pafs.FileSystem.from_uri(uri)
    except (ValueError, OSError, TypeError) as e:  # pyarrow: ArrowInvalid is a ValueError
        raise SimxError(f"{uri}: not a URI pyarrow can open ({str(e).splitlines()[0]})") from None
    scheme, rest = uri.split("://", 1)
    # file:///x -> path "/x", prefix "file://"; s3://b/k -> path "b/k", prefix "s3://";
    # hdfs://host:9000/x -> path "/x", prefix "hdfs://host:9000".
    rest = rest.rstrip("/") or rest
    host = rest[:len(rest) - len(path)] if path and rest.endswith(path) else ""
    return fs, path, f"{scheme}://{host}"


def uri_stat(info: Any) -> UriStat:
    mtime = int(info.mtime_ns or 0)
    return UriStat(int(info.size or 0), mtime, mtime)






class UriReader:
    """Reads URIs' bytes into temporary files for the Encoder, a few at a time.

    One filesystem object per prefix (an S3 client is costly to build); reads run in a
    thread pool, since an object store's latency, not its bandwidth, bounds one read.
    """

    def __init__(self, threads: int = 8) -> None:
        self._fs: dict[str, tuple[Any, str]] = {}
        self.threads = threads

    def _read(self, uri: str) -> bytes:
        prefix = "/".join(uri.split("/", 3)[:3])  # scheme://netloc: one filesystem each
        if prefix not in self._fs:
            fs, path, pre = filesystem_of(uri)
            self._fs[prefix] = (fs, pre)
        fs, pre = self._fs[prefix]
        path = uri[len(pre):] if uri.startswith(pre) else filesystem_of(uri)[1]
        try:
            with fs.open_input_stream(path) as f:
                return f.read()
        except FileNotFoundError:
            raise ImageError("file not found") from None
        except OSError as e:
            raise ImageError(f"cannot read: {str(e).splitlines()[0]}") from None

    def fetch(self, uris: list[str], stack: ExitStack) -> list[str | ImageError]:
        """Each URI as a local temporary file (removed when ``stack`` closes), or its error."""
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="simx-uri-"))

        def one(j: int) -> str | ImageError:
            try:
                data = self._read(uris[j])
            except ImageError as e:
                return e
            p = Path(tmp, f"{j}{os.path.splitext(uris[j])[1][:16]}")
            p.write_bytes(data)
            return str(p)

        with ThreadPoolExecutor(max(1, min(self.threads, len(uris)))) as pool:
            return list(pool.map(one, range(len(uris))))
