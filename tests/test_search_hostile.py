"""Search and model lookup under hostile conditions (issue 12 items 7, 8, 9, 12, 18, 19):
each case once answered from the wrong model, the wrong vectors or the wrong file."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_search_eval import run_cli  # noqa: E402
from tiny_model import build_tiny_model  # noqa: E402

from simx.cache import FeatureCache
from simx.run.encoder import Encoder
from simx.core.errors import ModelFileError
from simx.embed.pipeline import embed_into_cache
from simx.core.errors import SearchError
from simx.retrieval.search import search_cache, topk
from simx.run.session import resolve_model_path


def _photos(d: Path, rgb_photos, n: int = 4, step: int = 4) -> Path:
    from PIL import Image

    d.mkdir(parents=True, exist_ok=True)
    for name, a in list(rgb_photos.items())[:n]:
        Image.fromarray(a[::step, ::step]).save(d / f"{name}.png")
    return d


@pytest.fixture()
def tiny_cache(tmp_path, rgb_photos):
    model = build_tiny_model(tmp_path / "tiny-test.onnx")
    imgs = _photos(tmp_path / "imgs", rgb_photos)
    cache = tmp_path / "cache"
    embed_into_cache([imgs], Encoder(model, provider="cpu"), cache, progress=False)
    return model, imgs, cache


# ------------------------------------------------------------------ item 8: same dim, other model
def test_search_refuses_another_model_of_the_same_dim(exported, photo_dir, tmp_path):
    cache = tmp_path / "c"
    embed_into_cache([photo_dir], Encoder(exported["dinov2-small"], provider="cpu"), cache,
                     progress=False)
    q = tmp_path / "q.png"
    shutil.copy(photo_dir / "coffee.jpg", q)
    with pytest.raises(SearchError, match="did not make the cache.*dinov2-small"):
        search_cache(cache, [str(q)], model=str(exported["dinov2-small-reg"]))  # both 384-d
    (res,) = search_cache(cache, [str(q)], k=1, model=str(exported["dinov2-small"]))
    assert Path(res["hits"][0]["path"]).name == "coffee.jpg"


# ------------------------------------------------------------------ item 9: stale query rows
def test_query_modified_after_embedding_is_re_embedded(tiny_cache):
    model, imgs, cache = tiny_cache
    q = sorted(imgs.iterdir())[0]
    other = sorted(imgs.iterdir())[1]
    (before,) = search_cache(cache, [str(q)], k=1, model=str(model))
    assert before["hits"][0]["path"] == str(q.resolve())
    shutil.copy(other, q)  # the file now shows another photo
    (after,) = search_cache(cache, [str(q)], k=2, model=str(model))
    # Answered from the new content: it matches the other photo's row exactly (the cache
    # still holds the old row for q, which is no longer what q shows).
    top = after["hits"][0]
    assert top["path"] == str(other.resolve()) and top["score"] == pytest.approx(1.0, abs=1e-5)


# ------------------------------------------------------------------ item 7: stale FAISS index
def test_faiss_index_follows_a_same_count_change(tiny_cache, rgb_photos):
    model, imgs, cache = tiny_cache
    files = sorted(imgs.iterdir())
    q = str(files[1])
    search_cache(cache, [q], k=4, index="faiss", model=str(model))
    files[0].unlink()  # one removed, one added: same row count
    _photos(imgs / "new", {"x": rgb_photos["chelsea"]}, n=1, step=3)
    embed_into_cache([imgs], Encoder(model, provider="cpu"), cache, progress=False)
    assert len(FeatureCache(cache)) == 4
    exact = search_cache(cache, [q], k=4, model=str(model))
    fast = search_cache(cache, [q], k=4, index="faiss", model=str(model))
    assert [h["path"] for h in fast[0]["hits"]] == [h["path"] for h in exact[0]["hits"]]
    assert len(list(cache.glob("faiss-*.index"))) == 1  # the old commit's index is gone


def _faiss_search(args: tuple[str, str, str]) -> list[str]:
    cache, q, model = args
    (r,) = search_cache(cache, [q], k=3, index="faiss", model=model)
    return [h["path"] for h in r["hits"]]


def test_parallel_faiss_builds_do_not_race(tiny_cache):
    model, imgs, cache = tiny_cache
    q = str(sorted(imgs.iterdir())[0])
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        outs = pool.map(_faiss_search, [(str(cache), q, str(model))] * 8)
    assert all(o == outs[0] for o in outs)
    assert not [p for p in os.listdir(cache) if p.endswith(".tmp")]


def test_read_only_cache_gets_an_in_memory_index(tiny_cache, monkeypatch):
    import faiss

    model, imgs, cache = tiny_cache
    q = str(sorted(imgs.iterdir())[0])

    def refuse(*a, **k):  # tests run as root, so a read-only folder is simulated
        raise PermissionError(13, "Permission denied", str(cache))

    monkeypatch.setattr("tempfile.mkstemp", refuse)
    with pytest.warns(RuntimeWarning, match="in memory"):
        (r,) = search_cache(cache, [q], k=2, index="faiss", model=str(model))
    assert r["hits"][0]["path"] == str(Path(q).resolve())
    assert not list(cache.glob("faiss-*"))
    del faiss


# ------------------------------------------------------------------ item 12: NaN rows
@pytest.mark.parametrize("k", [1, 2, 3, 5, 8])
def test_nan_rows_rank_last_without_a_crash(k):
    rng = np.random.default_rng(0)
    db = rng.normal(size=(8, 4)).astype(np.float32)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    db[[2, 5]] = np.nan
    idx, val = topk(db[:1], db, k)
    assert idx.shape == (1, k)
    finite = [i for i in idx[0] if i not in (2, 5)]
    assert list(idx[0][: len(finite)]) == finite  # NaN rows only after every real one
    assert idx[0][0] == 0


def test_nan_query_is_an_error():
    db = np.eye(3, dtype=np.float32)
    with pytest.raises(SearchError, match="not finite"):
        topk(np.array([[np.nan, 0, 0]], np.float32), db, 2)


# ------------------------------------------------------------------ item 18: text on DINOv2
def test_text_search_on_a_dinov2_cache_says_why(exported, photo_dir, tmp_path):
    cache = tmp_path / "c"
    embed_into_cache([photo_dir], Encoder(exported["dinov2-small"], provider="cpu"), cache,
                     progress=False)
    code, _, err = run_cli("search", "--cache", cache, "--text", "a cat")
    assert code == 2 and "DINOv2 has no text tower" in err and "for dinov2-small" not in err


# ------------------------------------------------------------------ item 19: model lookup
def test_a_folder_named_like_the_model_does_not_shadow_it(tmp_path, monkeypatch):
    models = tmp_path / "models"
    build_tiny_model(models / "tiny-test.onnx")
    monkeypatch.setenv("SIMX_MODELS_DIR", str(models))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny-test").mkdir()  # e.g. made by `--cache tiny-test`
    assert resolve_model_path("tiny-test") == models / "tiny-test.onnx"


def test_unexported_catalogue_id_gets_the_export_command(tmp_path, monkeypatch):
    monkeypatch.setenv("SIMX_MODELS_DIR", str(tmp_path))
    with pytest.raises(ModelFileError, match=r"simx export dinov2 --variant base --registers"):
        resolve_model_path("dinov2-base-reg")
    with pytest.raises(ModelFileError, match=r"\$SIMX_MODELS_DIR"):
        resolve_model_path("no-such-model")


def test_search_finds_the_model_from_another_folder(tiny_cache, tmp_path, monkeypatch):
    model, imgs, cache = tiny_cache
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("SIMX_MODELS_DIR", str(elsewhere))
    q = tmp_path / "q.png"
    shutil.copy(sorted(imgs.iterdir())[0], q)
    code, out, err = run_cli("search", "--cache", cache, q, "-k", "1")
    assert code == 0, err
