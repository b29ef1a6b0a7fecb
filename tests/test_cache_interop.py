"""Layout interop: the tools of the clip-retrieval family read a simx cache's
``img_emb/`` + ``metadata/`` directly, without simx.

embedding-reader (a test dependency here) reads the ``parquet_npy`` layout; autofaiss, when
installed (it pins numpy<2 and pyarrow<16, so it is not a declared dependency; it still
imports and runs with the newer ones here), builds an index from ``img_emb/``. Tools that
ignore the manifest see tombstoned rows until ``simx cache compact``; the test shows both.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_cache import _save, run  # noqa: E402

from simx.cache import FeatureCache, compact

embedding_reader = pytest.importorskip("embedding_reader")


@pytest.fixture()
def cache(tmp_path, rgb_photos, tiny_enc) -> Path:
    """A cache of 16 photos written in three commits (three segments)."""
    d = tmp_path / "imgs"
    d.mkdir()
    for name, a in rgb_photos.items():
        _save(a[::3, ::3], d / f"{name}.jpg")
        _save(a[::4, ::4], d / f"{name}_4.png")
    c = tmp_path / "cache"
    run(d, tiny_enc, c, commit_every=6, batch_size=3)
    assert len(FeatureCache(c).meta["segments"]) >= 3
    return c


def _read_all(cache: Path) -> tuple[np.ndarray, list[str]]:
    from embedding_reader import EmbeddingReader

    r = EmbeddingReader(str(cache / "img_emb"), file_format="parquet_npy",
                        metadata_folder=str(cache / "metadata"), meta_columns=["path"])
    embs, paths = [], []
    for emb, meta in r(batch_size=5, show_progress=False):
        embs.append(emb)
        paths += list(meta["path"])
    return np.concatenate(embs), paths


def test_embedding_reader_reads_a_simx_cache(cache):
    fc = FeatureCache(cache)
    emb, paths = _read_all(cache)
    assert sorted(paths) == sorted(fc.paths) and len(paths) == len(set(paths))
    for e, p in zip(emb, paths):  # every row next to its own metadata
        np.testing.assert_array_equal(e, fc.vector(p))


def test_dead_rows_are_visible_to_raw_readers_until_compaction(cache, tiny_enc, rgb_photos):
    fc = FeatureCache(cache)
    victim = fc.paths[0]
    Path(victim).unlink()
    (Path(victim).parent / "added.jpg").write_bytes(Path(fc.paths[1]).read_bytes())
    run(Path(victim).parent, tiny_enc, cache)
    fc = FeatureCache(cache)
    _, paths = _read_all(cache)
    assert victim in paths and victim not in fc.paths  # the manifest's tombstone, unseen
    compact(cache)
    emb, paths = _read_all(cache)
    assert sorted(paths) == sorted(FeatureCache(cache).paths) and victim not in paths


def test_autofaiss_indexes_a_simx_cache(cache, tmp_path):
    autofaiss = pytest.importorskip("autofaiss")
    fc = FeatureCache(cache)
    # save_on_disk=False: autofaiss 2.17's infos JSON writer fails on numpy 2 float32 scalars
    index, _ = autofaiss.build_index(
        embeddings=str(cache / "img_emb"), file_format="npy", save_on_disk=False,
        metric_type="ip", max_index_memory_usage="50MB", current_memory_available="500MB",
        verbose=40)
    _, paths = _read_all(cache)  # autofaiss's row i is embedding-reader's row i
    assert index.ntotal == len(fc)
    for p in fc.paths[:5]:
        q = fc.vector(p)[None].astype(np.float32)
        _, ids = index.search(q / np.linalg.norm(q), 1)
        assert paths[int(ids[0, 0])] == p
