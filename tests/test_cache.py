"""The feature cache: format, incremental re-runs, crash recovery, locking, model mismatch.

Uses the tiny model (tests/tiny_model.py): the cache logic is the same for any model.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from tiny_model import build_tiny_model  # noqa: E402

from simx.cache import (
    FORMAT_1_LEFTOVERS,
    STAGING,
    CacheError,
    CacheLockedError,
    CacheMismatchError,
    CacheWriter,
    Row,
    FeatureCache,
    canonical_path,
    identity_meta,
)
from simx.run.encoder import Encoder
from simx.embed.pipeline import embed_into_cache


@pytest.fixture(scope="module")
def enc(tiny_enc) -> Encoder:
    return tiny_enc


def _save(a: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(a).save(path, quality=92)


@pytest.fixture()
def folder(tmp_path, rgb_photos) -> Path:
    """Twelve small real photos in two sub-folders (JPEG and PNG)."""
    d = tmp_path / "imgs"
    (d / "sub").mkdir(parents=True)
    for i, (name, a) in enumerate(rgb_photos.items()):
        small = a[:: 3, :: 3]
        _save(small, d / f"{name}.jpg")
        _save(small[: small.shape[0] // 2], d / "sub" / f"{name}_half.png")
    return d


def run(folder: Path, enc: Encoder, cache: Path, **kw):
    return embed_into_cache([folder], enc, cache, progress=False, **kw)


def snapshot(cache: Path) -> dict[str, object]:
    """Everything a user can observe in a cache, whatever its segmentation: rows by path
    (with their stat), their vectors, the failures (manifest and failed.jsonl) and the
    identity part of cache.json."""
    fc = FeatureCache(cache)
    order = np.argsort(np.array(fc.paths, dtype=object)) if len(fc) else np.zeros(0, np.int64)
    meta = identity_meta(fc.meta)
    return {
        "rows": sorted(fc.rows, key=lambda r: r.path),
        "failed": (cache / "failed.jsonl").read_text(),
        "failures": fc.failures,
        "meta": meta,
        "emb": np.asarray(fc.embeddings)[order] if len(fc) else np.zeros((0, fc.dim), np.float32),
    }


def leftovers(cache: Path) -> list[str]:
    """Files a finished writer must not leave: temp files, format 1's files (after --force),
    staged segments, and segment files no manifest names."""
    out = [n for n in (*FORMAT_1_LEFTOVERS, "cache.json.tmp")
           if (cache / n).exists()]
    out += [str(p) for p in (cache / STAGING).glob("*")] if (cache / STAGING).exists() else []
    live = {s["id"] for s in FeatureCache(cache).meta.get("segments", [])}
    for p in [*(cache / "img_emb").glob("*"), *(cache / "metadata").glob("*")]:
        if int(p.stem.rsplit("_", 1)[1]) not in live:
            out.append(str(p))
    return out


def assert_same_cache(a: Path, b: Path) -> None:
    """The same rows, stat, failures and identity; equal embeddings; no leftovers.

    ORT's CPU kernels give each image the same numbers whatever its batch mates
    (checked in test_encoder.py), so a re-run can equal a clean run exactly. Segments
    (which commit added which rows) differ by history and are not compared.
    """
    sa, sb = snapshot(a), snapshot(b)
    for k in ("rows", "failed", "failures", "meta"):
        assert sa[k] == sb[k], k
    np.testing.assert_array_equal(sa["emb"], sb["emb"])
    assert not leftovers(a)


def test_clean_run_writes_the_documented_format(folder, enc, tmp_path):
    import pyarrow.parquet as pq

    cache = tmp_path / "cache"
    rep = run(folder, enc, cache)
    assert (rep.embedded, rep.unchanged, rep.removed, rep.failed) == (len(list(folder.rglob("*.*"))), 0, 0, 0)
    meta = json.loads((cache / "cache.json").read_text())
    assert meta["format_version"] == 2 and meta["failures"] == []
    (seg,) = meta["segments"]
    assert seg["rows"] == rep.embedded and seg["dead"] == []
    emb = np.load(cache / "img_emb" / f"img_emb_{seg['id']}.npy", mmap_mode="r")
    assert isinstance(emb, np.memmap) and emb.dtype == np.float32 and emb.shape == (rep.embedded, enc.dim)
    rows = pq.read_table(cache / "metadata" / f"metadata_{seg['id']}.parquet").to_pylist()
    paths = [r["path"] for r in rows]
    assert paths == sorted(paths) and all(os.path.isabs(p) for p in paths)
    for r in rows:
        st = os.stat(r["path"])
        assert (r["size"], r["mtime_ns"], r["ctime_ns"], r["ino"]) == (
            st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    assert meta["model_id"] == "tiny-test" and meta["dim"] == enc.dim and meta["count"] == len(rows)
    assert meta["spec_hash"] == enc.spec.embedding_hash() and meta["simx_version"]
    assert (cache / "failed.jsonl").read_text() == ""
    assert not leftovers(cache)
    # Row i is the embedding of paths[i], and distinct photos are distinct.
    direct = enc.embed(paths)
    np.testing.assert_array_equal(np.asarray(emb), direct)
    assert np.abs(direct[0] - direct[1]).max() > 1e-3
    # One segment and no dead rows: the reader's embeddings are that one memmap.
    assert isinstance(FeatureCache(cache).embeddings, np.memmap)


def test_feature_cache_reader(folder, enc, tmp_path):
    cache = tmp_path / "cache"
    run(folder, enc, cache)
    fc = FeatureCache(cache)
    assert len(fc) == fc.embeddings.shape[0] == len(fc.paths)
    assert not fc.embeddings.flags.writeable  # one segment: the memmap itself
    p = folder / "sub" / "coffee_half.png"
    i = fc.row(p)
    assert fc.paths[i] == canonical_path(p) and p in fc
    # Relative paths and '..' resolve to the same row.
    cwd = os.getcwd()
    try:
        os.chdir(folder / "sub")
        assert fc.row("../sub/coffee_half.png") == i
    finally:
        os.chdir(cwd)
    with pytest.raises(KeyError, match="never embedded"):
        fc.row(folder / "nope.jpg")
    assert fc.meta["model_id"] == "tiny-test" and fc.dim == enc.dim
    with pytest.raises(CacheError, match="not a simx feature cache"):
        FeatureCache(tmp_path)


def test_incremental_add_change_delete_equals_clean_run(folder, enc, tmp_path, rgb_photos):
    cache = tmp_path / "cache"
    first = run(folder, enc, cache)
    # add one, change one (new content), delete one
    _save(next(iter(rgb_photos.values()))[::5, ::5], folder / "sub" / "added.jpg")
    changed = folder / "coffee.jpg"
    _save(rgb_photos["chelsea"][::4, ::4], changed)
    (folder / "rocket.jpg").unlink()
    rep = run(folder, enc, cache)
    assert (rep.embedded, rep.removed, rep.failed) == (2, 1, 0)
    assert rep.unchanged == first.embedded - 2
    clean = tmp_path / "clean"
    run(folder, enc, clean)
    assert_same_cache(cache, clean)
    # The second run added one segment of 2 rows and tombstoned 2; the first is untouched.
    segs = FeatureCache(cache).meta["segments"]
    assert [(s["rows"], len(s["dead"])) for s in segs] == [(first.embedded, 2), (2, 0)]
    # Nothing to do: nothing is rewritten.
    before = {p: os.stat(p).st_mtime_ns for p in cache.rglob("*") if p.is_file() and p.name != ".lock"}
    rep = run(folder, enc, cache)
    assert (rep.embedded, rep.unchanged, rep.removed) == (0, first.embedded, 0)
    assert {p: os.stat(p).st_mtime_ns for p in cache.rglob("*") if p.is_file() and p.name != ".lock"} == before


def test_failed_files_are_retried(folder, enc, tmp_path, rgb_photos):
    cache = tmp_path / "cache"
    bad = folder / "later_fixed.jpg"
    bad.write_bytes(b"not an image")
    rep = run(folder, enc, cache)
    assert rep.failed == 1
    (line,) = (cache / "failed.jsonl").read_text().splitlines()
    assert json.loads(line)["path"] == canonical_path(bad)
    _save(rgb_photos["astronaut"][::4, ::4], bad)
    rep = run(folder, enc, cache)
    assert (rep.embedded, rep.failed) == (1, 0)
    assert (cache / "failed.jsonl").read_text() == ""
    assert canonical_path(bad) in FeatureCache(cache).paths


def test_periodic_commits_give_the_same_cache(folder, enc, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    ra = run(folder, enc, a, commit_every=3, batch_size=2)
    assert ra.commits > 3
    run(folder, enc, b, batch_size=5)
    assert_same_cache(a, b)


def test_other_model_is_refused_unless_force(folder, enc, tmp_path):
    cache = tmp_path / "cache"
    run(folder, enc, cache)
    other = Encoder(build_tiny_model(tmp_path / "other.onnx", seed=1, weights="sha256:abc"), "cpu")
    with pytest.raises(CacheMismatchError, match="--force"):
        run(folder, other, cache)
    rep = run(folder, other, cache, force=True)
    assert rep.unchanged == 0 and rep.embedded == len(FeatureCache(cache))
    assert FeatureCache(cache).meta["spec_hash"] == other.spec.embedding_hash()
    # --fast or --exif-transpose change the numbers too: refused unless --force
    with pytest.raises(CacheMismatchError, match="fast=True"):
        run(folder, Encoder(other.path, "cpu", fast=True), cache)
    assert FeatureCache(cache).meta["options"] == {"exif_transpose": False, "fast": False}
    # and other preprocessing is another hash too
    resized = Encoder(build_tiny_model(tmp_path / "r.onnx", resize=40), "cpu")
    with pytest.raises(CacheMismatchError):
        run(folder, resized, cache)


def test_second_writer_fails_or_waits(folder, enc, tmp_path):
    cache = tmp_path / "cache"
    run(folder, enc, cache)
    with CacheWriter(cache, enc.spec):
        with pytest.raises(CacheLockedError, match="--lock-timeout"):
            CacheWriter(cache, enc.spec)
        with pytest.raises(CacheLockedError, match="after waiting"):
            CacheWriter(cache, enc.spec, lock_timeout=0.3)
        # Readers never need the lock.
        assert len(FeatureCache(cache)) > 0
    with CacheWriter(cache, enc.spec):  # released on exit
        pass


def make_format_1(cache: Path) -> None:
    """Turn a cache into the format-1 folder a pre-release simx wrote: embeddings.npy,
    index.jsonl, failed.jsonl and a cache.json of format_version 1, and a stale redo log."""
    fc = FeatureCache(cache)
    order = sorted(range(len(fc)), key=lambda i: fc.paths[i])
    meta = identity_meta(fc.meta) | {"format_version": 1}
    np.save(cache / "embeddings.npy", np.asarray(fc.embeddings)[order])
    rows = [fc.rows[i] for i in order]
    (cache / "index.jsonl").write_text("".join(
        json.dumps({"path": r.path, "size": r.size, "mtime_ns": r.mtime_ns}) + "\n" for r in rows))
    (cache / "failed.jsonl").write_text("")
    (cache / "commit.json").write_text(json.dumps({"files": ["embeddings.npy"]}))
    shutil.rmtree(cache / "img_emb")
    shutil.rmtree(cache / "metadata")
    (cache / "cache.json").write_text(json.dumps(meta, indent=2) + "\n")


def test_format_1_is_refused_and_force_rebuilds_it(folder, enc, tmp_path):
    """No released simx wrote format 1: readers and writers refuse it with one clear error,
    leaving its files alone, and --force replaces it with a format-2 cache."""
    cache, clean = tmp_path / "cache", tmp_path / "clean"
    run(folder, enc, cache)
    make_format_1(cache)
    before = sorted(p.name for p in cache.iterdir())
    for open_it in (lambda: FeatureCache(cache), lambda: run(folder, enc, cache)):
        with pytest.raises(CacheError, match=r"format-1 cache written by a pre-release simx.*--force"):
            open_it()
    assert sorted(p.name for p in cache.iterdir()) == before
    rep = run(folder, enc, cache, force=True)
    assert rep.unchanged == 0 and rep.embedded == len(FeatureCache(cache)) > 2
    assert FeatureCache(cache).meta["format_version"] == 2
    run(folder, enc, clean)
    assert_same_cache(cache, clean)  # format 1's files are gone too (leftovers)


def test_orphan_and_staged_segments_are_discarded(folder, enc, tmp_path):
    """What a crash between streaming and the manifest leaves: staged files, and segment
    files no manifest names. Readers ignore them; the next writer deletes them."""
    cache = tmp_path / "cache"
    run(folder, enc, cache)
    fc = FeatureCache(cache)
    (seg,) = fc.meta["segments"]
    orphan = seg["id"] + 7
    shutil.copy(cache / "img_emb" / f"img_emb_{seg['id']}.npy", cache / "img_emb" / f"img_emb_{orphan}.npy")
    shutil.copy(cache / "metadata" / f"metadata_{seg['id']}.parquet",
                cache / "metadata" / f"metadata_{orphan}.parquet")
    (cache / STAGING).mkdir()
    (cache / STAGING / "img_emb_99.npy.new").write_bytes(b"partial")
    assert len(FeatureCache(cache)) == len(fc)
    with CacheWriter(cache, enc.spec) as w:
        assert w.count == len(fc)
    assert not leftovers(cache)


def test_damaged_cache_is_a_clear_error(folder, enc, tmp_path):
    cache = tmp_path / "cache"
    run(folder, enc, cache)
    import pyarrow.parquet as pq

    (mp,) = (cache / "metadata").glob("*.parquet")
    t = pq.read_table(mp)
    pq.write_table(t.slice(0, t.num_rows - 1), mp)
    n = t.num_rows
    with pytest.raises(CacheError, match=rf"damaged \({n - 1} rows, the manifest says {n}\).*--force"):
        FeatureCache(cache)
    not_cache = tmp_path / "nc"
    not_cache.mkdir()
    (not_cache / "embeddings.npy").write_bytes(b"x")
    with pytest.raises(CacheError, match="not a simx cache"):
        run(folder, enc, not_cache)
    shutil.rmtree(not_cache)
    # A folder of another tool's shards (clip-retrieval output) is not taken over either.
    (not_cache / "img_emb").mkdir(parents=True)
    np.save(not_cache / "img_emb" / "img_emb_0.npy", np.zeros((2, enc.dim), np.float32))
    with pytest.raises(CacheError, match="img_emb but no cache.json"):
        run(folder, enc, not_cache)
    assert (not_cache / "img_emb" / "img_emb_0.npy").exists()


def test_readers_never_see_a_mixed_state_while_a_writer_commits(tmp_path):
    """Two alternating states with the same row count: a reader that mixed files from
    both would pass a count check, so the reader must detect the overlapping commit."""
    import threading
    import time

    from tiny_model import tiny_spec

    spec = tiny_spec()
    cache = tmp_path / "cache"
    rows = {g: [Row(f"/img/{i:03d}.jpg", g, g) for i in range(50)] for g in (1, 2)}
    stop = threading.Event()
    commits = []

    def writer() -> None:
        with CacheWriter(cache, spec) as w:
            g = 1
            while not stop.is_set() or not commits:
                # every row replaced: half the stored rows dead, so each commit also compacts
                w.add(rows[g], np.full((50, spec.dim), g, np.float32))
                w.commit([])
                commits.append(g)
                g = 3 - g
                time.sleep(0.002)  # real writers commit every 30 s; keep readers' retries finite

    t = threading.Thread(target=writer)
    t.start()
    try:
        while not commits:
            pass
        reads = 0
        while reads < 100 or len(commits) < 10:  # many reads across many commits
            reads += 1
            fc = FeatureCache(cache)
            g = fc.rows[0].size
            assert all(r.size == g for r in fc.rows)
            assert (np.asarray(fc.embeddings) == g).all()
            assert fc.meta["count"] == 50
    finally:
        stop.set()
        t.join()
    assert len(commits) >= 10


def test_batches_seam_feeds_the_same_cache_in_any_order(folder, enc, tmp_path):
    """Another engine (Ray) hands batches to embed_into_cache through ``batches``; they may
    arrive in any order and any size, and the cache must equal the default run's."""
    from simx.run.encoder import Batch

    seen: list[list[str]] = []

    def reversed_batches(todo: list[str]):
        seen.append(list(todo))
        got = list(enc.iter_embed(todo, 3))
        for b in reversed(got):
            yield Batch(list(b.indices), b.embeddings, list(b.failures))

    a, b = tmp_path / "a", tmp_path / "b"
    rep = run(folder, enc, a, batches=reversed_batches, commit_every=4)
    assert rep.embedded == len(seen[0]) > 0 and seen[0] == sorted(seen[0])
    run(folder, enc, b)
    assert_same_cache(a, b)
    # An unchanged re-run asks the engine for nothing.
    seen.clear()
    run(folder, enc, a, batches=reversed_batches)
    assert seen == [] or seen == [[]]
