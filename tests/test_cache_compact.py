"""Format 2's maintenance: automatic and explicit compaction (crash-safe, kill -9 at every
step), and ``simx cache export`` to one npy or parquet file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_cache import _save, assert_same_cache, leftovers, run, snapshot  # noqa: E402

from simx.cache import COMPACT_DEAD_FRACTION, FeatureCache


@pytest.fixture()
def folder(tmp_path, rgb_photos) -> Path:
    """Sixteen small photos."""
    d = tmp_path / "imgs"
    d.mkdir()
    for i, (name, a) in enumerate(rgb_photos.items()):
        _save(a[::3, ::3], d / f"{name}.jpg")
        _save(a[::4, ::4], d / f"{name}_4.png")
    return d


def simx(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "simx.cli", *map(str, args)],
                          env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=120)


def _segments(cache: Path) -> list[tuple[int, int]]:
    return [(s["rows"], len(s["dead"])) for s in FeatureCache(cache).meta["segments"]]


def _change(folder: Path, rgb_photos: dict, n: int) -> None:
    """Re-save ``n`` files with other pixels: their rows become dead at the next run."""
    for p, a in zip(sorted(folder.glob("*.jpg"))[:n], rgb_photos.values()):
        _save(np.ascontiguousarray(a[1::5, 1::5]), p)


def test_dead_rows_below_the_threshold_stay_and_above_it_compact(folder, tiny_enc, tmp_path,
                                                                   rgb_photos):
    cache, clean = tmp_path / "c", tmp_path / "clean"
    n = run(folder, tiny_enc, cache).embedded
    few = int(COMPACT_DEAD_FRACTION * n) - 1  # just under the threshold
    _change(folder, rgb_photos, few)
    run(folder, tiny_enc, cache)
    assert _segments(cache) == [(n, few), (few, 0)]
    assert not isinstance(FeatureCache(cache).embeddings, np.memmap)  # segmented view
    run(folder, tiny_enc, clean)
    assert_same_cache(cache, clean)
    # Two more changed files pass 25% dead: the commit compacts into one sorted segment.
    _change(folder, rgb_photos, few + 2)
    rep = run(folder, tiny_enc, cache)
    assert rep.embedded == few + 2
    assert _segments(cache) == [(n, 0)]
    fc = FeatureCache(cache)
    assert isinstance(fc.embeddings, np.memmap) and fc.paths == sorted(fc.paths)
    clean2 = tmp_path / "clean2"
    run(folder, tiny_enc, clean2)
    assert_same_cache(cache, clean2)


def test_segmented_embeddings_index_like_an_array(folder, tiny_enc, tmp_path, rgb_photos):
    cache = tmp_path / "c"
    run(folder, tiny_enc, cache)
    _change(folder, rgb_photos, 2)
    (sorted(folder.glob("*.png"))[0]).unlink()
    run(folder, tiny_enc, cache)
    fc = FeatureCache(cache)
    e = fc.embeddings
    full = np.asarray(e)
    assert full.shape == e.shape == (len(fc), fc.dim) and len(e) == len(fc.paths)
    for i, p in enumerate(fc.paths):
        np.testing.assert_array_equal(full[i], fc.vector(p))
        np.testing.assert_array_equal(e[i], tiny_enc.embed([p])[0])
    np.testing.assert_array_equal(e[-1], full[-1])
    np.testing.assert_array_equal(e[3:9:2], full[3:9:2])
    np.testing.assert_array_equal(e[[5, 0, 5]], full[[5, 0, 5]])
    mask = np.arange(len(fc)) % 3 == 0
    np.testing.assert_array_equal(e[mask], full[mask])
    np.testing.assert_array_equal(e[2:4, :3], full[2:4, :3])
    with pytest.raises(IndexError):
        e[len(fc)]


def test_simx_cache_compact(folder, tiny, tiny_enc, tmp_path, rgb_photos):
    cache = tmp_path / "c"
    run(folder, tiny_enc, cache)
    _change(folder, rgb_photos, 2)
    run(folder, tiny_enc, cache)
    before = snapshot(cache)
    old = sorted(str(p) for p in cache.glob("img_emb/*.npy"))
    r = simx("cache", "compact", cache)
    assert r.returncode == 0, r.stderr
    assert "2 segments -> 1, 2 dead rows dropped" in r.stdout
    after = snapshot(cache)
    for k in ("rows", "failures", "meta"):
        assert after[k] == before[k], k
    np.testing.assert_array_equal(after["emb"], before["emb"])
    assert len(_segments(cache)) == 1 and not leftovers(cache)
    assert not any(Path(p).exists() for p in old)
    # and the cache still works for a writer with the model
    assert run(folder, tiny_enc, cache).unchanged == len(before["rows"])
    r = simx("cache", "compact", tmp_path / "nope")
    assert r.returncode == 2 and "no simx feature cache" in r.stderr


@pytest.mark.parametrize("point", ["compact-begin:1", "commit-written:1", "commit-rename:1",
                                   "commit-rename:2", "commit-manifest:1", "compact-done:1"])
def test_kill_9_during_compaction(point, folder, tiny_enc, tmp_path, rgb_photos):
    cache = tmp_path / "c"
    run(folder, tiny_enc, cache)
    _change(folder, rgb_photos, 2)
    run(folder, tiny_enc, cache)
    before = snapshot(cache)
    r = simx("cache", "compact", cache, env={"SIMX_TEST_CRASH": point})
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr)
    mid = snapshot(cache)  # readable as it is, and the same cache, old or new manifest
    for k in ("rows", "failures", "meta"):
        assert mid[k] == before[k], k
    np.testing.assert_array_equal(mid["emb"], before["emb"])
    r = simx("cache", "compact", cache)
    assert r.returncode == 0, r.stderr
    assert len(_segments(cache)) == 1 and not leftovers(cache)
    assert run(folder, tiny_enc, cache).embedded == 0


@pytest.mark.parametrize("fmt", ["npy", "parquet"])
def test_export_one_file_in_path_order(fmt, folder, tiny_enc, tmp_path, rgb_photos):
    cache = tmp_path / "c"
    run(folder, tiny_enc, cache)
    _change(folder, rgb_photos, 2)
    run(folder, tiny_enc, cache)  # two segments and dead rows: the export has neither
    fc = FeatureCache(cache)
    paths = sorted(fc.paths)
    want = np.stack([fc.vector(p) for p in paths])
    out = tmp_path / f"all.{fmt}"
    r = simx("cache", "export", cache, "--format", fmt, "-o", out)
    assert r.returncode == 0, r.stderr
    assert f"{len(paths)} rows" in r.stdout
    if fmt == "npy":
        got = np.load(out)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, want)
    else:
        import pyarrow.parquet as pq

        t = pq.read_table(out)
        assert t.column("path").to_pylist() == paths
        assert t.column("size").to_pylist() == [os.stat(p).st_size for p in paths]
        np.testing.assert_array_equal(np.stack(t.column("embedding").to_numpy(zero_copy_only=False)), want)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    r = simx("cache", "export", cache, "--format", fmt, "-o", tmp_path / "no" / "x")
    assert r.returncode == 2 and "no folder" in r.stderr
    r = simx("cache", "export", cache, "--format", "csv", "-o", out)
    assert r.returncode == 2


def test_manifest_is_small_beside_the_rows(folder, tiny_enc, tmp_path):
    """What a commit rewrites is cache.json: it holds no row data, only per-segment counts."""
    cache = tmp_path / "c"
    run(folder, tiny_enc, cache)
    meta = json.loads((cache / "cache.json").read_text())
    assert set(meta["segments"][0]) == {"id", "rows", "dead"}
