"""Top-k search, `simx search`, dataset layouts, `simx eval` and sim-bench method configs.

Plumbing tests use the tiny model (milliseconds); the end-to-end eval runs the
exported random-weight dinov2-small and ViT-B-32 on a small UKBench-layout set built
from scikit-image photos, 4 augmented views each.
"""

from __future__ import annotations

import builtins
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
from tiny_model import build_tiny_model  # noqa: E402

from simx.cli.app import main
from simx.retrieval.datasets import DatasetError, default_cache_dir, load_dataset
from simx.retrieval.evaluate import evaluate
from simx.core.errors import SimxError
from simx.core.errors import SearchError
from simx.retrieval.search import rank_all, search_cache, topk

CLIP_ID = "openclip-vit-b-32-laion2b_s34b_b79k"


# ----------------------------------------------------------------------------- synthetic sets
def augmented_views(rgb: np.ndarray, n: int, seed: int) -> list[np.ndarray]:
    """n views of one photo: the photo, then flips, crops, small rotations, colour jitter."""
    from PIL import Image, ImageEnhance

    rng = np.random.default_rng(seed)
    base = Image.fromarray(rgb)
    views = [np.asarray(base)]
    for _ in range(n - 1):
        im = base
        if rng.random() < 0.5:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        w, h = im.size
        f = rng.uniform(0.75, 0.95)
        cw, ch = int(w * f), int(h * f)
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        im = im.crop((x, y, x + cw, y + ch)).rotate(float(rng.uniform(-8, 8)), expand=False)
        im = ImageEnhance.Brightness(im).enhance(float(rng.uniform(0.8, 1.2)))
        im = ImageEnhance.Color(im).enhance(float(rng.uniform(0.7, 1.3)))
        im = ImageEnhance.Contrast(im).enhance(float(rng.uniform(0.8, 1.2)))
        views.append(np.asarray(im))
    return views


def make_ukbench(root: Path, photos: dict[str, np.ndarray], sub: str = "full") -> Path:
    """ukbench00000.jpg ...: 4 consecutive ids per photo, in root/full/ as the archive has it."""
    from PIL import Image

    d = root / sub if sub else root
    d.mkdir(parents=True, exist_ok=True)
    i = 0
    for g, (_, a) in enumerate(sorted(photos.items())):
        for v in augmented_views(a, 4, seed=g):
            Image.fromarray(v).save(d / f"ukbench{i:05d}.jpg", quality=90)
            i += 1
    (d / "README.txt").write_text("not an image of the set")
    return root


def make_holidays(root: Path, photos: dict[str, np.ndarray]) -> Path:
    """100000.jpg ...: groups of uneven size (2..4 views), query = xxxx00, in root/jpg/."""
    from PIL import Image

    d = root / "jpg"
    d.mkdir(parents=True, exist_ok=True)
    for g, (_, a) in enumerate(sorted(photos.items())):
        for j, v in enumerate(augmented_views(a, 2 + g % 3, seed=100 + g)):
            Image.fromarray(v).save(d / f"{1000 + g}{j:02d}.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def ukbench_root(tmp_path_factory, rgb_photos) -> Path:
    return make_ukbench(tmp_path_factory.mktemp("ukbench"), rgb_photos)


@pytest.fixture(scope="module")
def holidays_root(tmp_path_factory, rgb_photos) -> Path:
    return make_holidays(tmp_path_factory.mktemp("holidays"), rgb_photos)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-test.onnx")


def ns_reference(cache_dir: Path, root: Path) -> float:
    """UKBench N-S recomputed by brute force from the cache's own vectors: the mean number
    of same-object images among each image's 4 nearest (itself included)."""
    from simx.cache import FeatureCache

    ds = load_dataset("ukbench", root)
    c = FeatureCache(cache_dir)
    e = np.stack([c.vector(p) for p in ds.paths]).astype(np.float64)
    sims = e @ e.T
    groups = np.asarray(ds.groups)
    hits = [(groups[np.argsort(-sims[i], kind="stable")[:4]] == groups[i]).sum()
            for i in range(len(groups))]
    return float(np.mean(hits))


def run_cli(*args: object) -> tuple[int, str, str]:
    r = CliRunner().invoke(main, [str(a) for a in args])
    if r.exception and not isinstance(r.exception, SystemExit):
        raise r.exception
    return r.exit_code, r.stdout, r.stderr


# ----------------------------------------------------------------------------- top-k
def test_topk_matches_full_sort_and_breaks_ties_by_index():
    rng = np.random.default_rng(0)
    db = rng.normal(size=(200, 8)).astype(np.float32)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    db[50] = db[7]  # exact duplicates: equal scores for every query
    db[120] = db[7]
    q = rng.normal(size=(5, 8)).astype(np.float32)
    q[0] = db[7]
    idx, val = topk(q, db, k=10)
    full = rank_all(q, db)
    np.testing.assert_array_equal(idx, full[:, :10])
    assert list(idx[0][:3]) == [7, 50, 120]  # the tie, lowest row first
    assert np.all(np.diff(val, axis=1) <= 0)
    np.testing.assert_allclose(val, np.take_along_axis(q @ db.T, idx, axis=1), rtol=1e-6)


def test_topk_edge_cases(tmp_path):
    db = np.eye(3, dtype=np.float32)
    np.save(tmp_path / "e.npy", db)
    mm = np.load(tmp_path / "e.npy", mmap_mode="r")
    idx, val = topk(np.array([0, 1, 0], np.float32), mm, k=10)  # 1-d query, k > N, memmap
    assert idx.shape == (1, 3) and idx[0, 0] == 1 and val[0, 0] == 1.0
    assert list(idx[0, 1:]) == [0, 2]  # zero-score tie: index order
    with pytest.raises(SearchError, match="dimension"):
        topk(np.ones((1, 4), np.float32), db)
    with pytest.raises(SearchError, match="empty"):
        topk(np.ones((1, 3), np.float32), np.zeros((0, 3), np.float32))


def test_faiss_missing_is_a_clear_error(monkeypatch, tmp_path):
    from simx.retrieval import ann as search

    real_import = builtins.__import__

    def no_faiss(name, *a, **kw):
        if name == "faiss":
            raise ImportError("No module named 'faiss'")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_faiss)
    with pytest.raises(SearchError, match=r"pip install 'simx-embed\[faiss\]'"):
        search.faiss_index(tmp_path, np.eye(3, dtype=np.float32), None)


def test_faiss_agrees_with_exact(tmp_path):
    import faiss  # noqa: F401  (a test dependency: missing FAISS fails, never skips)

    from simx.retrieval.ann import faiss_index, faiss_topk

    rng = np.random.default_rng(1)
    db = rng.normal(size=(300, 16)).astype(np.float32)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    q = db[:4] + 0.01
    index = faiss_index(tmp_path, db, "h")
    assert (tmp_path / "faiss-h.index").is_file()
    i1, v1 = faiss_topk(index, q, 5)
    i2, v2 = topk(q, db, 5)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_allclose(v1, v2, atol=1e-5)
    assert faiss_index(tmp_path, db, "h").ntotal == 300  # reloaded
    assert faiss_index(tmp_path, db[:100], "h").ntotal == 100  # stale: rebuilt


# ----------------------------------------------------------------------------- simx search
@pytest.fixture(scope="module")
def photo_cache(tmp_path_factory, photo_dir, tiny) -> Path:
    from simx.run.encoder import Encoder
    from simx.embed.pipeline import embed_into_cache

    cache = tmp_path_factory.mktemp("cache") / "c"
    embed_into_cache([photo_dir], Encoder(tiny, provider="cpu"), cache, progress=False)
    return cache


def test_search_cached_query_finds_itself(photo_cache, photo_dir, tiny):
    q = photo_dir / "astronaut.jpg"
    (res,) = search_cache(photo_cache, [str(q)], k=3, model=str(tiny))
    assert res["kind"] == "image" and len(res["hits"]) == 3
    top = res["hits"][0]
    assert Path(top["path"]).name == "astronaut.jpg" and top["score"] == pytest.approx(1.0, abs=1e-5)
    assert [h["rank"] for h in res["hits"]] == [1, 2, 3]
    assert res["hits"][0]["score"] >= res["hits"][1]["score"] >= res["hits"][2]["score"]


def test_search_new_image_is_embedded_with_the_cache_model(photo_cache, photo_dir, tiny,
                                                           tmp_path, monkeypatch, rgb_photos):
    from PIL import Image

    q = tmp_path / "chelsea_flipped.png"
    Image.fromarray(rgb_photos["chelsea"][:, ::-1].copy()).save(q)
    monkeypatch.setenv("SIMX_MODELS_DIR", str(tiny.parent))  # cache.json names "tiny-test"
    code, out, err = run_cli("search", "--cache", photo_cache, q, "-k", "2", "--json")
    assert code == 0, err
    (res,) = json.loads(out)
    assert res["query"] == str(q) and {"rank", "row", "path", "score"} <= set(res["hits"][0])
    assert -1.0 <= res["hits"][1]["score"] <= res["hits"][0]["score"] <= 1.0 + 1e-6
    code, out, _ = run_cli("search", "--cache", photo_cache, q, "-k", "2")
    assert code == 0 and out.startswith("image query:") and len(out.strip().splitlines()) == 3


def test_search_faiss_index_matches_exact(photo_cache, photo_dir, tiny):
    q = [str(photo_dir / "coffee.jpg"), str(photo_dir / "rocket.jpg")]
    exact = search_cache(photo_cache, q, k=4, model=str(tiny))
    code, out, err = run_cli("search", "--cache", photo_cache, *q, "-k", "4", "--index", "faiss",
                             "-m", tiny, "--json")
    assert code == 0, err
    fast = json.loads(out)
    assert len(list(photo_cache.glob("faiss-*.index"))) == 1
    for a, b in zip(exact, fast):
        assert [h["path"] for h in a["hits"]] == [h["path"] for h in b["hits"]]
        np.testing.assert_allclose([h["score"] for h in a["hits"]],
                                   [h["score"] for h in b["hits"]], atol=1e-5)


def test_search_errors(photo_cache, tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("SIMX_MODELS_DIR", str(tmp_path))  # the cache's model is not there
    q = tmp_path / "new.jpg"
    from PIL import Image

    Image.new("RGB", (40, 30), (200, 10, 10)).save(q)
    # cache.json records the model's path, so search finds it from any folder
    assert json.loads((photo_cache / "cache.json").read_text())["model_path"] == str(tiny)
    code, _, err = run_cli("search", "--cache", photo_cache, q)
    assert code == 0, err
    import shutil

    old = tmp_path / "old"  # a cache from before model_path was recorded
    shutil.copytree(photo_cache, old)
    meta = json.loads((old / "cache.json").read_text())
    del meta["model_path"]
    (old / "cache.json").write_text(json.dumps(meta))
    code, _, err = run_cli("search", "--cache", old, q)
    assert code == 2 and "pass --model" in err and "tiny-test" in err
    code, out, err = run_cli("search", "--cache", photo_cache, q, "--model", tiny, "--json")
    assert code == 0, err
    code, _, err = run_cli("search", "--cache", photo_cache)
    assert code == 2 and "at least one query" in err
    code, _, err = run_cli("search", "--cache", photo_cache, tmp_path / "missing.jpg", "-m", tiny)
    assert code == 2 and "not found" in err
    code, _, err = run_cli("search", "--cache", tmp_path, q)
    assert code == 2 and "cache" in err
    code, _, err = run_cli("search", "--cache", photo_cache, "--text", "a cat", "-m", tiny)
    assert code == 2 and "text tower" in err


# ----------------------------------------------------------------------------- datasets
def test_dataset_layouts(tmp_path, ukbench_root, holidays_root):
    ds = load_dataset("ukbench", ukbench_root)
    assert ds.paths[0].name == "ukbench00000.jpg" and ds.paths[0].parent.name == "full"
    assert len(ds.paths) % 4 == 0 and ds.groups[:8] == [0, 0, 0, 0, 1, 1, 1, 1]
    hd = load_dataset("holidays", holidays_root)
    assert hd.paths[0].name == "100000.jpg" and hd.groups[0] == 1000
    sizes = np.bincount(np.unique(hd.groups, return_inverse=True)[1])
    assert len(set(sizes.tolist())) > 1  # uneven groups
    with pytest.raises(DatasetError, match="no ukbench images"):
        load_dataset("ukbench", tmp_path)
    with pytest.raises(DatasetError, match="unknown dataset"):
        load_dataset("oxford5k", tmp_path)
    assert "eval-ukbench-" in default_cache_dir(ds, "abc").name


def test_eval_tiny_both_datasets_and_cache_reuse(tmp_path, tiny, ukbench_root, holidays_root):
    r1 = evaluate("ukbench", ukbench_root, tiny, cache_dir=tmp_path / "u", provider="cpu",
                  progress=False)
    assert r1["embedded"] == r1["images"]
    assert r1["metrics"]["ns_score"] == pytest.approx(ns_reference(tmp_path / "u", ukbench_root))
    r2 = evaluate("ukbench", ukbench_root, tiny, cache_dir=tmp_path / "u", provider="cpu",
                  progress=False)
    assert r2["embedded"] == 0 and r2["reused"] == r2["images"]
    assert r2["metrics"] == r1["metrics"]
    h = evaluate("holidays", holidays_root, tiny, cache_dir=tmp_path / "h", provider="cpu",
                 progress=False)
    assert h["queries"] == h["groups"] and 0.0 < h["metrics"]["map"] <= 1.0
    assert 0.0 < h["metrics"]["map_at_10"] <= 1.0
    # A cache holding other images is refused, not shrunk.
    with pytest.raises(SimxError, match="outside this holidays set"):
        evaluate("holidays", holidays_root, tiny, cache_dir=tmp_path / "u", provider="cpu")


@pytest.mark.parametrize("model_id", ["dinov2-small", CLIP_ID])
def test_eval_command_end_to_end(model_id, exported, ukbench_root, tmp_path):
    args = ("eval", "--dataset", "ukbench", "--root", ukbench_root, "--model", exported[model_id],
            "--cache", tmp_path / "cache", "--json", "--batch-size", "4")
    code, out, err = run_cli(*args)
    assert code == 0, err
    r = json.loads(out)
    assert r["model"] == model_id and r["weights"] == "random"
    assert r["images"] == 4 * r["groups"] and r["queries"] == r["images"]
    assert r["metrics"]["ns_score"] == pytest.approx(ns_reference(tmp_path / "cache", ukbench_root))
    assert r["embedded"] == r["images"] and r["reused"] == 0
    code, out, err = run_cli(*args)
    assert code == 0, err
    again = json.loads(out)
    assert again["embedded"] == 0 and again["reused"] == r["images"]
    assert again["metrics"] == r["metrics"]
    code, out, _ = run_cli(*args[:-3])  # table output
    assert code == 0 and "N-S score" in out and "embedded 0" in out


# ----------------------------------------------------------------------------- method configs
CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "methods"


def test_shipped_method_configs():
    from simx.embed.simbench import load_method_config

    d = load_method_config(CONFIGS / "dinov2.yaml")
    assert d["model"] == "dinov2-base" and d["batch_size"] == 16 and d["provider"] == "cpu"
    assert d["cache_dir"] == "artifacts/dinov2"
    o = load_method_config(CONFIGS / "openclip.yaml")
    assert o["model"] == CLIP_ID and o["batch_size"] == 16


@pytest.mark.parametrize(
    "text, match",
    [
        ("method: sift_bovw\n", "not one simx runs"),
        ("method: dinov2\nvariant: tiny\n", "valid variants"),
        ("method: openclip\nmodel: ViT-B-32\n", "needs model and pretrained"),
        ("method: dinov2\nvariant: small\nnormalize: false\n", "normalize"),
        ("method: dinov2\nvariant: small\ndevice: mps\n", "device"),
        ("method: dinov2\nvariant: small\ndistance: chi_square\n", "distance"),
        ("method: dinov2\nvariant: small\nbatch_sise: 3\n", "unknown key"),
        ("method: dinov2\nvariant: small\nbatch_size: 0\n", "batch_size"),
        ("- just a list\n", "mapping"),
        ("method: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_method_configs(tmp_path, text, match):
    from simx.embed.simbench import ConfigError, load_method_config

    p = tmp_path / "m.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_method_config(p)


def test_method_config_simx_keys(tmp_path):
    from simx.embed.simbench import load_method_config

    p = tmp_path / "m.yaml"
    p.write_text("method: dinov2\nvariant: small\nregisters: true\ndevice: cuda:0\n"
                 "onnx: /models/x.onnx\n")
    d = load_method_config(p)
    assert d["model_id"] == "dinov2-small-reg" and d["model"] == "/models/x.onnx"
    assert d["provider"] == "cuda" and d["batch_size"] is None


def test_apply_method_config_command_line_wins(tmp_path):
    from simx.embed.simbench import ConfigError, apply_method_config

    cfg = CONFIGS / "dinov2.yaml"
    o = apply_method_config(cfg)
    assert o == {"model": "dinov2-base", "cache_dir": Path("artifacts/dinov2"), "batch_size": 16,
                 "provider": "cpu", "threads": None}
    o = apply_method_config(cfg, model="x.onnx", cache_dir=tmp_path, batch_size=2, provider="cuda")
    assert (o["model"], o["cache_dir"], o["batch_size"], o["provider"]) == ("x.onnx", tmp_path, 2,
                                                                            "cuda")
    assert apply_method_config(None, model="m", cache_dir="c")["provider"] == "auto"
    with pytest.raises(ConfigError, match="--cache"):
        apply_method_config(None, model="m")
