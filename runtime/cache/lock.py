"""The one-writer lock: ``fcntl.flock`` on the cache's ``.lock`` (never deleted, which would
race), holding the writer's pid for the message another writer gets."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

from simx.cache.format import LOCK, CacheError, CacheLockedError

try:  # POSIX only; readers work without it (Windows), writers say why they cannot lock
    import fcntl
except ImportError:  # pragma: no cover - exercised by a subprocess test
    fcntl = None  # type: ignore[assignment]


def acquire(directory: Path, timeout: float) -> int:
    """Lock ``directory`` for writing, waiting up to ``timeout`` seconds (0: fail at once,
    negative: wait forever); the locked file descriptor."""
    if fcntl is None:
        raise CacheError("writing a cache needs POSIX file locks (fcntl), which this "
                         "platform lacks; caches can still be read here")
    if timeout != timeout:  # NaN would never reach the deadline
        raise CacheError("the lock timeout is NaN; give seconds, 0, or -1 to wait forever")
    fd = os.open(directory / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = None if timeout < 0 else time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
        if deadline is not None and time.monotonic() >= deadline:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
            os.close(fd)
            who = f" (pid {holder})" if holder.isdigit() else ""
            waited = f" after waiting {timeout:g} s" if timeout > 0 else ""
            raise CacheLockedError(
                f"cache {directory} is being written by another process{who}{waited}; "
                "wait for it, or pass --lock-timeout SECONDS to wait"
            )
        time.sleep(0.1)
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def release(fd: int) -> None:
    """Unlock and close what ``acquire`` returned."""
    try:
        os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
