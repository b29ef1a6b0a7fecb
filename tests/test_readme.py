"""The README's Python snippets run as written: each ```python block, in order, in one
namespace, in a folder holding what the snippets name (a.jpg, b.png, the dinov2-small id in
./onnx_models, and a cache in feats/ filled by `simx embed`). The model is the tiny test
model saved under that id (random weights; no torch)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from simx.embed.pipeline import embed_into_cache
from simx.run.encoder import Encoder

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_the_readme_has_python_snippets():
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 2 and all("simx" in b for b in blocks)


@pytest.fixture
def readme_folder(tmp_path, monkeypatch, tiny, rgb_photos):
    models = tmp_path / "onnx_models"
    models.mkdir()
    shutil.copy(tiny, models / "dinov2-small.onnx")
    names = iter(rgb_photos)
    Image.fromarray(rgb_photos[next(names)]).save(tmp_path / "a.jpg", quality=95)
    Image.fromarray(rgb_photos[next(names)]).save(tmp_path / "b.png")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SIMX_MODELS_DIR", raising=False)
    embed_into_cache(["a.jpg", "b.png"], Encoder("dinov2-small", provider="cpu"), "feats",
                     progress=False)
    return tmp_path


def test_readme_python_snippets_run_as_written(readme_folder, capsys):
    ns: dict = {}
    for i, block in enumerate(python_blocks(README.read_text())):
        exec(compile(block, f"README.md python block {i + 1}", "exec"), ns)  # noqa: S102
    # What the snippets promise, checked on what they computed.
    feats, cache, hits, x = ns["feats"], ns["cache"], ns["hits"], ns["x"]
    assert feats.shape == (2, ns["enc"].dim) and feats.dtype == np.float32
    assert np.allclose(np.linalg.norm(feats, axis=1), 1, atol=1e-5)
    assert not np.allclose(feats[0], feats[1])  # distinct images, distinct embeddings
    assert np.allclose(ns["v"], feats[0], atol=1e-5)  # the cached row is the same embedding
    assert hits[0]["hits"][0]["path"].endswith("a.jpg") and hits[0]["hits"][0]["score"] > 0.999
    assert x.shape == (3, *ns["spec"].preprocess.crop_hw) and x.dtype == np.float32
    assert len(cache) == 2 and "2 rows" in capsys.readouterr().out
