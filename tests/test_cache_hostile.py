"""Hostile inputs against the feature cache (issue 12): each case once gave a wrong answer,
a lost row, a hang or a traceback. Every test here fails on the code before the fix."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_cache import _save, leftovers, run  # noqa: E402
from test_embed_cli import simx_embed, summary  # noqa: E402

from simx.cache import CacheError, CacheWriteError, FeatureCache, Row


@pytest.fixture()
def folder(tmp_path, rgb_photos) -> Path:
    """Six small photos: three at the top, three in sub/."""
    d = tmp_path / "imgs"
    (d / "sub").mkdir(parents=True)
    for i, (name, a) in enumerate(list(rgb_photos.items())[:3]):
        _save(a[::4, ::4], d / f"{name}.jpg")
        _save(a[::5, ::5], d / "sub" / f"{name}_s.png")
    return d


def _hooked(tmp_path: Path, code: str) -> dict[str, str]:
    """The environment of a subprocess whose interpreter first runs ``code`` (sitecustomize):
    how a real CLI run meets a refusing filesystem, as root, where chmod refuses nothing."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(code)
    return {"PYTHONPATH": f"{hook}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


# ------------------------------------------------------------------ item 6: unreadable folders
def test_unreadable_subfolder_keeps_its_rows(folder, tiny_enc, tmp_path, monkeypatch):
    cache = tmp_path / "c"
    assert run(folder, tiny_enc, cache).embedded == 6
    sub = str(folder / "sub")
    real = os.scandir

    def scandir(p="."):  # root ignores permissions, so the refusal is simulated
        if os.fspath(p) == sub:
            raise PermissionError(errno.EACCES, "Permission denied", sub)
        return real(p)

    monkeypatch.setattr(os, "scandir", scandir)
    rep = run(folder, tiny_enc, cache)
    assert rep.removed == 0 and rep.embedded == 0
    assert len(FeatureCache(cache)) == 6
    assert [f.path for f in rep.failures] == [str(Path(sub).resolve())]
    assert "cannot list folder" in rep.failures[0].error
    monkeypatch.undo()
    rep = run(folder, tiny_enc, cache)  # readable again: the folder failure goes away
    assert (rep.failed, rep.unchanged, rep.removed) == (0, 6, 0)


def test_file_whose_stat_fails_keeps_its_row(folder, tiny_enc, tmp_path, monkeypatch):
    cache = tmp_path / "c"
    run(folder, tiny_enc, cache)
    victim = str(next(iter(sorted((folder / "sub").iterdir()))).resolve())
    real = os.stat

    def stat(p, *a, **k):
        if os.fspath(p) == victim:
            raise OSError(errno.ENAMETOOLONG, "File name too long", victim)
        return real(p, *a, **k)

    monkeypatch.setattr(os, "stat", stat)
    rep = run(folder, tiny_enc, cache)
    monkeypatch.undo()
    assert rep.removed == 0 and rep.failed == 1
    assert victim in FeatureCache(cache)


def test_unreadable_folder_cli_exit_1(folder, tiny, tmp_path):
    """The real CLI, with a folder made unlistable by an error handler hook in a subprocess."""
    cache = tmp_path / "c"
    assert simx_embed(folder, "--model", tiny, "--cache", cache).returncode == 0
    env = _hooked(tmp_path,
        "import os, errno\n_r = os.scandir\n"
        f"_sub = {str(folder / 'sub')!r}\n"
        "def _s(p='.'):\n"
        "    if os.fspath(p) == _sub: raise PermissionError(errno.EACCES, 'Permission denied', _sub)\n"
        "    return _r(p)\n"
        "os.scandir = _s\n")
    r = simx_embed(folder, "--model", tiny, "--cache", cache, env=env)
    assert r.returncode == 1, r.stderr
    assert summary(r.stdout)["removed"] == 0
    assert "cannot list folder" in r.stderr and "failed.jsonl" in r.stderr
    assert len(FeatureCache(cache)) == 6


# ------------------------------------------------------------------ item 9: in-place edits
def test_same_size_same_mtime_edit_is_re_embedded(folder, tiny_enc, tmp_path):
    cache = tmp_path / "c"
    run(folder, tiny_enc, cache)
    f = folder / "sub" / sorted(os.listdir(folder / "sub"))[0]
    st = os.stat(f)
    data = bytearray(f.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 16] = bytes(b ^ 0x5A for b in data[mid:mid + 16])  # same size, other bytes
    f.write_bytes(bytes(data))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # `touch -r`: size and mtime as before
    assert os.stat(f).st_size == st.st_size and os.stat(f).st_mtime_ns == st.st_mtime_ns
    rep = run(folder, tiny_enc, cache)
    assert rep.unchanged == 5 and rep.embedded + rep.failed == 1  # seen as changed


def test_rows_without_ctime_still_compare_on_size_and_mtime():
    st = os.stat(__file__)
    old = Row("/x", st.st_size, st.st_mtime_ns)
    assert old.matches(st)
    assert not Row("/x", st.st_size, st.st_mtime_ns, st.st_ctime_ns + 1, st.st_ino).matches(st)
    assert Row.of("/x", st).matches(st)


# ------------------------------------------------------------------ item 12: shifted rows
def test_duplicated_index_line_is_damage(folder, tiny_enc, tmp_path):
    cache = tmp_path / "c"
    run(folder, tiny_enc, cache)
    import pyarrow as pa
    import pyarrow.parquet as pq

    (mp,) = (cache / "metadata").glob("*.parquet")
    t = pq.read_table(mp)
    paths = t.column("path").to_pylist()
    paths[2] = paths[1]  # same count, one row shifted onto the wrong vector
    pq.write_table(t.set_column(0, "path", pa.array(paths)), mp)
    with pytest.raises(CacheError, match="duplicated.*--force"):
        FeatureCache(cache)


def test_non_finite_rows_are_failures_not_rows(folder, tiny_enc, tmp_path, monkeypatch):
    cache = tmp_path / "c"
    real = type(tiny_enc).iter_embed

    def poisoned(self, items, batch_size=None):
        for b in real(self, items, batch_size):
            if len(b.indices):
                b.embeddings = b.embeddings.copy()
                b.embeddings[0, 0] = np.nan
            yield b

    monkeypatch.setattr(type(tiny_enc), "iter_embed", poisoned)
    rep = run(folder, tiny_enc, cache)
    assert rep.failed >= 1 and all("non-finite" in f.error for f in rep.failures)
    c = FeatureCache(cache)
    assert np.isfinite(np.asarray(c.embeddings)).all() and len(c) == 6 - rep.failed


# ------------------------------------------------------------------ item 13: non-UTF-8 names
def test_non_utf8_file_name_round_trips(folder, tiny_enc, tmp_path):
    name = os.fsdecode(b"caf\xe9.jpg")
    shutil.copy(next(folder.glob("*.jpg")), folder / name)
    cache = tmp_path / "c"
    rep = run(folder, tiny_enc, cache)
    assert rep.embedded == 7 and rep.failed == 0
    import pyarrow.parquet as pq

    (mp,) = (cache / "metadata").glob("*.parquet")
    t = pq.read_table(mp).to_pylist()  # valid UTF-8 strings, for every other reader
    (bad,) = [r for r in t if r["path_hex"]]
    assert "\ufffd" in bad["path"] and bytes.fromhex(bad["path_hex"]).endswith(b"caf\xe9.jpg")
    c = FeatureCache(cache)
    assert str((folder / name).resolve()) in c.paths
    c.vector(folder / name)
    rep = run(folder, tiny_enc, cache)
    assert (rep.embedded, rep.unchanged) == (0, 7)


# ------------------------------------------------------------------ item 14: full disk
def _state(cache: Path) -> tuple[str, dict[str, bytes]]:
    """The manifest and every segment file, byte for byte."""
    segs = {str(p.relative_to(cache)): p.read_bytes()
            for p in [*cache.glob("img_emb/*"), *cache.glob("metadata/*")]}
    return (cache / "cache.json").read_text(), segs


def _leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if p.name.endswith((".new", ".tmp"))) + leftovers(cache)


def test_enospc_at_preallocation_keeps_the_previous_commit(folder, tiny_enc, tmp_path, rgb_photos,
                                                           monkeypatch):
    cache = tmp_path / "c"
    run(folder, tiny_enc, cache)
    before = _state(cache)
    _save(rgb_photos["coffee"][::3, ::3], folder / "new.jpg")

    def full(fd, off, n):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(CacheWriteError, match="No space left on device.*previous commit is kept"):
        run(folder, tiny_enc, cache)
    monkeypatch.undo()
    assert _state(cache) == before and _leftovers(cache) == []
    assert run(folder, tiny_enc, cache).embedded == 1


def test_read_only_filesystem_is_one_line_exit_2(folder, tiny, tmp_path, rgb_photos):
    cache = tmp_path / "c"
    assert simx_embed(folder, "--model", tiny, "--cache", cache).returncode == 0
    before = _state(cache)
    _save(rgb_photos["coffee"][::3, ::3], folder / "new.jpg")
    env = _hooked(tmp_path,  # EROFS on every write of a .new file
        "import builtins, errno, os\n_o = os.open\n"
        "def _open(p, flags, *a, **k):\n"
        "    if str(p).endswith('.new') and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):\n"
        "        raise OSError(errno.EROFS, 'Read-only file system', str(p))\n"
        "    return _o(p, flags, *a, **k)\n"
        "os.open = _open\n"
        "_bo = builtins.open\n"
        "def _bopen(f, mode='r', *a, **k):\n"
        "    if str(f).endswith('.new') and any(c in mode for c in 'wa+'):\n"
        "        raise OSError(errno.EROFS, 'Read-only file system', str(f))\n"
        "    return _bo(f, mode, *a, **k)\n"
        "builtins.open = _bopen\n")
    r = simx_embed(folder, "--model", tiny, "--cache", cache, env=env)
    assert r.returncode == 2, (r.stdout, r.stderr)
    err = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(err) == 1 and "Read-only file system" in err[0] and "Traceback" not in r.stderr
    assert _state(cache) == before and _leftovers(cache) == []


def test_file_size_limit_is_one_line_exit_2(folder, tiny, tmp_path, rgb_photos):
    cache = tmp_path / "c"
    assert simx_embed(folder, "--model", tiny, "--cache", cache).returncode == 0
    before = _state(cache)
    for i in range(40):  # enough new rows that the new segment passes the limit
        _save(rgb_photos["coffee"][i:: 7, ::7], folder / f"n{i}.jpg")
    limit = os.path.getsize(next(cache.glob("img_emb/*.npy"))) + 512
    code = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); "
            "from simx.cli import main; sys.argv = ['simx'] + sys.argv[1:]; main()")
    r = subprocess.run([sys.executable, "-c", code, "embed", str(folder), "--model", str(tiny),
                        "--cache", str(cache)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "File too large" in r.stderr and "Traceback" not in r.stderr
    assert _state(cache) == before and _leftovers(cache) == []


# ------------------------------------------------------------------ item 15: damaged caches
def _seg(c: Path) -> Path:
    return next(c.glob("img_emb/*.npy"))


def _zero_npy(c: Path) -> None:
    _seg(c).write_bytes(b"")


def _npz(c: Path) -> None:
    a = np.load(_seg(c))
    with open(_seg(c), "wb") as f:
        np.savez(f, a=a)


def _meta(value: object) -> callable:
    def damage(c: Path) -> None:
        (c / "cache.json").write_text(json.dumps(value))
    return damage


def _meta_field(key: str, value: object) -> callable:
    def damage(c: Path) -> None:
        m = json.loads((c / "cache.json").read_text())
        m[key] = value
        (c / "cache.json").write_text(json.dumps(m))
    return damage


def _dead_out_of_range(c: Path) -> None:
    m = json.loads((c / "cache.json").read_text())
    m["segments"][0]["dead"] = [999]
    (c / "cache.json").write_text(json.dumps(m))


def _as_dir(name: str) -> callable:
    def damage(c: Path) -> None:
        p = c / name
        if p.exists():
            p.unlink()
        p.mkdir()
    return damage


def _fifo(pick: callable) -> callable:
    def damage(c: Path) -> None:
        p = pick(c)
        p.unlink()
        os.mkfifo(p)
    return damage


def _file_for_dir(c: Path) -> None:
    shutil.rmtree(c / "metadata")
    (c / "metadata").write_text("x")


DAMAGE = {
    "zero-byte npy": _zero_npy,
    "npz for npy": _npz,
    "cache.json list": _meta([1, 2]),
    "cache.json null": _meta(None),
    "count not integer": _meta_field("count", "six"),
    "segments not list": _meta_field("segments", 3),
    "segment entry malformed": _meta_field("segments", [{"id": "x"}]),
    "tombstone out of range": _dead_out_of_range,
    "failures not list": _meta_field("failures", {"a": 1}),
    "cache.json.tmp dir": _as_dir("cache.json.tmp"),
    "lock dir": _as_dir(".lock"),
    "metadata is a file": _file_for_dir,
    "fifo segment npy": _fifo(_seg),
    "fifo segment metadata": _fifo(lambda c: next(c.glob("metadata/*.parquet"))),
    "fifo cache.json": _fifo(lambda c: c / "cache.json"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_cache_says_so_and_force_rebuilds(case, folder, tiny, tmp_path):
    cache = tmp_path / "c"
    assert simx_embed(folder, "--model", tiny, "--cache", cache).returncode == 0
    DAMAGE[case](cache)
    r = simx_embed(folder, "--model", tiny, "--cache", cache, timeout=60)  # a hang fails here
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "damaged" in r.stderr and "--force" in r.stderr and "Traceback" not in r.stderr
    r = simx_embed(folder, "--model", tiny, "--cache", cache, "--force", timeout=60)
    assert r.returncode == 0, r.stderr
    assert len(FeatureCache(cache)) == 6


def test_lock_timeout_nan_is_refused(folder, tiny, tiny_enc, tmp_path):
    r = simx_embed(folder, "--model", tiny, "--cache", tmp_path / "c", "--lock-timeout", "nan",
                   timeout=60)
    assert r.returncode == 2 and "not a finite number" in r.stderr  # the CLI's own check
    with pytest.raises(CacheError, match="NaN"):  # and the library's, for API callers
        run(folder, tiny_enc, tmp_path / "c2", lock_timeout=float("nan"))


# ------------------------------------------------------------------ console notes
def test_console_names_failed_files_and_failed_jsonl(folder, tiny, tmp_path):
    for i in range(7):
        (folder / f"bad{i}.jpg").write_bytes(b"not a jpeg")
    r = simx_embed(folder, "--model", tiny, "--cache", tmp_path / "c")
    assert r.returncode == 1
    assert r.stderr.count("failed: ") == 5 and "... and 2 more" in r.stderr
    assert str(tmp_path / "c" / "failed.jsonl") in r.stderr


def test_folder_without_images_warns(tmp_path, tiny):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    r = simx_embed(empty, "--model", tiny, "--cache", tmp_path / "c")
    assert r.returncode == 0 and "no image files found" in r.stderr


# ------------------------------------------------------------------ Windows: no fcntl
def test_reader_works_without_fcntl(folder, tiny_enc, tmp_path):
    cache = tmp_path / "c"
    run(folder, tiny_enc, cache)
    code = ("import sys; sys.modules['fcntl'] = None\n"
            "from simx.cache import FeatureCache, CacheWriter\n"
            f"c = FeatureCache({str(cache)!r}); assert len(c) == 6, len(c)\n"
            "from simx.cache import CacheError\n"
            "try:\n"
            f"    CacheWriter({str(cache)!r}, None)\n"
            "except CacheError as e:\n"
            "    assert 'fcntl' in str(e); print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


def test_a_really_full_disk_is_one_line_and_keeps_the_commit(folder, tiny, tmp_path, rgb_photos):
    """A real ENOSPC: the cache on a 2 MiB tmpfs, filled to the last block, then a commit."""
    mnt = tmp_path / "small_fs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2M", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()}); the monkeypatched ENOSPC "
                    "and RLIMIT_FSIZE tests above still run")
    try:
        cache = mnt / "c"
        assert simx_embed(folder, "--model", tiny, "--cache", cache).returncode == 0
        before = _state(cache)
        _save(rgb_photos["coffee"][::3, ::3], folder / "new.jpg")
        fd = os.open(mnt / "filler", os.O_WRONLY | os.O_CREAT)  # take every free block
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        r = simx_embed(folder, "--model", tiny, "--cache", cache, timeout=120)
        assert r.returncode == 2, (r.returncode, r.stderr)  # not SIGBUS (-7), not a traceback (1)
        assert "No space left on device" in r.stderr and "Traceback" not in r.stderr
        assert _state(cache) == before and _leftovers(cache) == []
        (mnt / "filler").unlink()
        assert summary(simx_embed(folder, "--model", tiny, "--cache", cache).stdout)["embedded"] == 1
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
