"""Housekeeping of a cache folder around its commits: refusing (or, under --force, removing)
special files where cache files belong, bringing the folder back to its last commit after
a crash, dropping what a commit made unreachable, and mirroring the failures."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any

from simx.cache.format import (
    EMB_DIR,
    FAILED,
    FORMAT_1_LEFTOVERS,
    LOCK,
    META,
    META_DIR,
    SEG_NAME,
    STAGING,
    TMP,
    CacheError,
    damaged,
    jsonl,
    segments_of,
)
from simx.core.fs import write_bytes_durably


def clear_special(d: Path, force: bool) -> None:
    """A folder, FIFO or device where a cache file belongs: damage, removed by --force."""
    for name in (LOCK, META, META + TMP, FAILED, *FORMAT_1_LEFTOVERS):
        p = d / name
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            continue
        if stat.S_ISREG(st.st_mode):
            continue
        if not force:
            raise damaged(p, "not a regular file")
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(p)
        else:
            p.unlink()
    for name in (EMB_DIR, META_DIR, STAGING):
        p = d / name
        if p.exists() and not p.is_dir():
            if not force:
                raise damaged(p, "not a folder")
            p.unlink()


def recover(d: Path, ours: bool) -> None:
    """Bring the folder to its last commit: drop staged and orphan segment files (written
    by a commit that never reached its manifest). ``ours``: a simx writer held the folder,
    so segment files without a cache.json are its crashed first commit."""
    shutil.rmtree(d / STAGING, ignore_errors=True)
    (d / (META + TMP)).unlink(missing_ok=True)
    if not (d / META).exists():
        if ours:
            remove_orphans(d, set())
        return
    try:
        meta = json.loads((d / META).read_bytes())
        live = {s["id"] for s in segments_of(d / META, meta)} if isinstance(meta, dict) else None
    except (OSError, ValueError, CacheError, TypeError, KeyError):
        live = None
    if live is None:
        return  # damaged or format 1: the writer's load says so (or --force rebuilds)
    remove_orphans(d, live)
    drop_format_1(d)  # left by a --force rebuild that crashed after its first commit
    mirror_failures(d, meta.get("failures", []))


def remove_orphans(d: Path, live: set[int]) -> None:
    """Segment files of segments not in ``live``."""
    for sub in (EMB_DIR, META_DIR):
        folder = d / sub
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            m = SEG_NAME.match(p.name)
            if m and int(m.group(1)) not in live:
                p.unlink()


def drop_format_1(d: Path) -> None:
    """A format-1 cache's files, once a format-2 commit (``--force``) replaced them."""
    for name in FORMAT_1_LEFTOVERS:
        (d / name).unlink(missing_ok=True)


def mirror_failures(d: Path, failures: list[dict[str, Any]]) -> None:
    """failed.jsonl, for people and scripts that grep it; the manifest is the truth."""
    p = d / FAILED
    data = jsonl(failures)
    try:
        if p.read_bytes() == data:
            return
    except FileNotFoundError:
        pass
    write_bytes_durably(d / (FAILED + TMP), data)
    os.replace(d / (FAILED + TMP), p)
