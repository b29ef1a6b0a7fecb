"""The CLIP text tower: export parity, the runtime TextEncoder, and `simx search --text`."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from tiny_model import build_tiny_model  # noqa: E402

from simx.model import catalogue
from simx.core.errors import ModelFileError


CLIP_ID = "openclip-vit-b-32-laion2b_s34b_b79k"
TEXTS = [
    "a photo of a cat",
    "a photo of a dog",
    "Crème brûlée — 東京タワー 🐶",
    "an astronaut " * 40,  # > 77 tokens: truncated with eot kept last
    "",
    "&amp; HTML &lt;entities&gt;   and   spaces!!",
]


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory) -> Path:
    reuse = os.environ.get("SIMX_TEST_EXPORTS")
    return Path(reuse) if reuse else tmp_path_factory.mktemp("text_models")


@pytest.fixture(scope="module")
def torch_clip():
    from simx.export.text import build_clip

    model, label = build_clip(catalogue.get(CLIP_ID), "random")
    assert label == "random"
    return model


@pytest.fixture(scope="module")
def text_model(text_dir, torch_clip) -> Path:
    from simx.export.text import export_text_tower

    path = text_dir / f"{CLIP_ID}-text.onnx"
    if os.environ.get("SIMX_TEST_EXPORTS") and path.exists():
        return path
    # The model built once for the module is the one exported (weights="random", seed 0).
    return export_text_tower(catalogue.get(CLIP_ID), weights="random", output_dir=text_dir,
                             model=torch_clip, weights_label="random")


def test_text_file_spec_and_graph(text_model):
    import onnx

    from simx.run.session import read_spec

    spec = read_spec(text_model)
    assert spec.id == f"{CLIP_ID}-text" and spec.weights == "random" and spec.normalize
    assert spec.extra["kind"] == "text" and spec.extra["image_model"] == CLIP_ID
    assert spec.extra["context_length"] == 77 and spec.dim == 512
    from simx.run.tokenizer import VOCAB_SHA256

    assert spec.extra["vocab_sha256"] == VOCAB_SHA256
    from simx.run.text import pair_id

    assert spec.extra["pair"] == pair_id(CLIP_ID, catalogue.get(CLIP_ID).source, "random")
    assert "tokenizer_file" not in spec.extra  # CLIP's BPE ships with simx
    assert spec.parity["min_cosine"] >= 0.99999
    assert spec.parity["max_abs"] <= 1e-4 * spec.parity["max_ref"]
    assert spec.parity["max_cosine_between_texts"] < 0.999
    m = onnx.load(str(text_model), load_external_data=False)
    (inp,) = m.graph.input
    assert inp.name == "input_ids" and inp.type.tensor_type.elem_type == onnx.TensorProto.INT64
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and dims[1].dim_value == 77


def test_text_encoder_matches_torch_end_to_end(text_model, torch_clip):
    """Our tokenizer + ONNX text tower vs open_clip.tokenize + torch encode_text."""
    import open_clip
    import torch

    from simx.run.text import TextEncoder

    te = TextEncoder(text_model, provider="cpu")
    got = te.embed(TEXTS, batch_size=4)
    with torch.no_grad():
        ref = torch_clip.encode_text(open_clip.tokenize(TEXTS), normalize=True).numpy()
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    cos = np.sum(got * ref, axis=1)
    assert cos.min() >= 0.99999, cos
    assert np.abs(got - ref).max() <= 1e-4
    sims = got @ got.T
    assert sims[~np.eye(len(TEXTS), dtype=bool)].max() < 0.999  # distinct texts differ


def test_text_tower_found_beside_image_model(text_model, tmp_path, monkeypatch):
    from simx.run.text import text_model_path

    # Beside an image model file, found by file name or by the image spec's id.
    d = tmp_path / "m"
    d.mkdir()
    os.symlink(text_model, d / text_model.name)
    assert text_model_path(d / f"{CLIP_ID}.onnx") == d / text_model.name
    img = build_tiny_model(d / f"{CLIP_ID}-int8.onnx", model_id=CLIP_ID, dim=512)
    assert text_model_path(img) == d / text_model.name
    monkeypatch.setenv("SIMX_MODELS_DIR", str(text_model.parent))
    assert text_model_path(CLIP_ID) == text_model
    assert text_model_path(text_model) == text_model
    monkeypatch.setenv("SIMX_MODELS_DIR", str(tmp_path))
    with pytest.raises(ModelFileError, match="--text"):
        text_model_path("dinov2-small")


def test_verify_text_rejects_a_different_model(text_model, torch_clip):
    import copy

    import torch

    from simx.export.text import PARITY_TEXTS, TextExportError, _TextTower, verify_text
    from simx.run.tokenizer import tokenize

    model = copy.deepcopy(torch_clip)
    with torch.no_grad():
        model.text_projection.mul_(1.5).add_(0.01)
    with pytest.raises(TextExportError, match="parity failed"):
        verify_text(text_model, _TextTower(model), tokenize(list(PARITY_TEXTS)))


def test_no_text_tower_for_dinov2(tmp_path):
    from simx.export.text import TextExportError, export_text_tower

    with pytest.raises(TextExportError, match="no text tower"):
        export_text_tower(catalogue.get("dinov2-small"), weights="random", output_dir=tmp_path)


def test_search_text_against_a_cache(text_model, tmp_path, photo_dir, monkeypatch):
    """`simx search --text`: a 512-d stand-in image model named like ViT-B-32 fills the cache
    (plumbing only: random towers put text and images in unrelated spaces)."""
    from click.testing import CliRunner

    from simx.cli.app import main
    from simx.run.encoder import Encoder
    from simx.embed.pipeline import embed_into_cache

    models = tmp_path / "models"
    models.mkdir()
    image = build_tiny_model(models / f"{CLIP_ID}.onnx", model_id=CLIP_ID, dim=512,
                             source=catalogue.get(CLIP_ID).source)
    os.symlink(text_model, models / text_model.name)
    cache = tmp_path / "cache"
    embed_into_cache([photo_dir], Encoder(image, provider="cpu"), cache, progress=False)
    monkeypatch.setenv("SIMX_MODELS_DIR", str(models))
    r = CliRunner().invoke(main, ["search", "--cache", str(cache), "--text", "a cat",
                                  "--text", "a rocket", "-k", "3", "--json"])
    assert r.exit_code == 0, r.stderr
    res = json.loads(r.stdout)
    assert [x["kind"] for x in res] == ["text", "text"] and [len(x["hits"]) for x in res] == [3, 3]
    assert all(-1.0 <= h["score"] <= 1.0 for x in res for h in x["hits"])
    # Image and text queries together: one result list each, in order.
    q = str(photo_dir / "coffee.jpg")
    r = CliRunner().invoke(main, ["search", "--cache", str(cache), q, "--text", "coffee", "--json"])
    assert r.exit_code == 0, r.stderr
    assert [x["kind"] for x in json.loads(r.stdout)] == ["image", "text"]


def test_encoder_embed_text(text_model, tmp_path):
    """Encoder.embed_text finds the text tower beside the image model and agrees with TextEncoder."""
    from simx.run.encoder import Encoder
    from simx.run.text import TextEncoder

    d = tmp_path / "m"
    d.mkdir()
    os.symlink(text_model, d / text_model.name)
    image = build_tiny_model(d / f"{CLIP_ID}.onnx", model_id=CLIP_ID, dim=512,
                             source=catalogue.get(CLIP_ID).source)
    enc = Encoder(image, provider="cpu")
    got = enc.embed_text(["a cat", "a dog"])
    assert got.shape == (2, 512) and got.dtype == np.float32
    np.testing.assert_allclose(got, TextEncoder(text_model, provider="cpu").embed(["a cat", "a dog"]),
                               atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_image_text_cosines_match_torch(exported, text_model, torch_clip, rgb_photos):
    """Both towers in one space: simx image x text cosines equal open_clip's (same seed-0 weights)."""
    import open_clip
    import torch
    from PIL import Image

    from simx.run.encoder import Encoder
    from simx.run.text import TextEncoder

    names = ["astronaut", "coffee", "chelsea"]
    texts = ["an astronaut", "a cup of coffee", "a cat on a chair"]
    got = Encoder(exported[CLIP_ID], provider="cpu").embed([rgb_photos[n] for n in names]) @ \
        TextEncoder(text_model, provider="cpu").embed(texts).T
    _, _, pre = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    with torch.no_grad():
        x = torch.stack([pre(Image.fromarray(rgb_photos[n])) for n in names])
        ref = (torch_clip.encode_image(x, normalize=True)
               @ torch_clip.encode_text(open_clip.tokenize(texts), normalize=True).T).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-4)


def test_text_export_goes_through_the_one_pipeline(text_model, torch_clip, tmp_path, monkeypatch):
    """onnx.checker runs, the weights hash is recorded, and a failed parity leaves nothing
    (the old text pipeline left .tmp files and wrote external data under the final name)."""
    from simx.export import text, verify
    from simx.run.session import read_spec
    from simx.model.weights_hash import weights_sha256

    spec = read_spec(text_model)
    assert spec.weights_sha256 == weights_sha256(text_model)
    checked = []
    real_check = verify.check_graph
    monkeypatch.setattr(verify, "check_graph", lambda p, what="": (checked.append(what), real_check(p, what)))

    def failing(*a, **k):
        raise text.TextExportError("text tower parity failed: injected")

    monkeypatch.setattr(text, "verify_text", failing)
    out = tmp_path / "out"
    with pytest.raises(text.TextExportError, match="injected"):
        text.export_text_tower(catalogue.get(CLIP_ID), weights="random", output_dir=out,
                               model=torch_clip, weights_label="random")
    assert checked == [f"{CLIP_ID}-text"]
    assert list(out.iterdir()) == []


# ----------------------------------------------------------------------------- SigLIP (HF tokenizer)
SIGLIP_ID = "openclip-vit-b-16-siglip-webli"  # the smallest SigLIP; 2 text blocks for time


@pytest.fixture(scope="module")
def siglip_tokenizer_dir(tmp_path_factory) -> Path:
    """A T5-style sentencepiece tokenizer trained here (the real one is on the unreachable hub)."""
    pytest.importorskip("transformers")
    from tiny_tokenizers import t5_like

    return t5_like(tmp_path_factory.mktemp("siglip_tok"))


@pytest.fixture(scope="module")
def torch_siglip():
    from simx.export.text import build_clip

    model, label = build_clip(catalogue.get(SIGLIP_ID), "random", text_layers=2)
    assert label == "random" and len(model.text.transformer.resblocks) == 2
    return model


@pytest.fixture(scope="module")
def siglip_text(tmp_path_factory, torch_siglip, siglip_tokenizer_dir) -> Path:
    from simx.export.text import export_text_tower

    return export_text_tower(catalogue.get(SIGLIP_ID), weights="random",
                             output_dir=tmp_path_factory.mktemp("siglip_text"), model=torch_siglip,
                             weights_label="random", tokenizer=siglip_tokenizer_dir, text_layers=2)


def test_siglip_text_file_records_its_tokenizer(siglip_text):
    import hashlib

    from simx.run.text import pair_id
    from simx.run.session import read_spec

    spec = read_spec(siglip_text)
    e = spec.extra
    assert e["kind"] == "text" and e["image_model"] == SIGLIP_ID and e["text_layers"] == 2
    assert e["tokenizer"] == "hf:timm/ViT-B-16-SigLIP" and e["context_length"] == 64
    side = siglip_text.with_name(e["tokenizer_file"])
    assert side.name == f"{SIGLIP_ID}-text.tokenizer.json"
    assert hashlib.sha256(side.read_bytes()).hexdigest() == e["vocab_sha256"]
    s = e["tokenizer_settings"]
    assert s["clean"] == "canonicalize" and s["pad_token_id"] == 1 and s["context_length"] == 64
    entry = catalogue.get(SIGLIP_ID)
    assert e["pair"] == pair_id(SIGLIP_ID, entry.source, "random")
    assert spec.parity["min_cosine"] >= 0.99999 and spec.parity["max_cosine_between_texts"] < 0.999
    assert spec.dim == 768


def test_siglip_text_matches_torch_end_to_end(siglip_text, torch_siglip, siglip_tokenizer_dir):
    """simx (tokenizers + ONNX) vs open_clip's HFTokenizer + torch encode_text."""
    import torch
    from open_clip.tokenizer import HFTokenizer

    from simx.run.text import TextEncoder

    ref_tok = HFTokenizer(str(siglip_tokenizer_dir), context_length=64, clean="canonicalize")
    te = TextEncoder(siglip_text, provider="cpu")
    np.testing.assert_array_equal(te.tokenizer(TEXTS), ref_tok(TEXTS).numpy())
    got = te.embed(TEXTS, batch_size=4)
    with torch.no_grad():
        ref = torch_siglip.encode_text(ref_tok(TEXTS), normalize=True).numpy()
    assert np.sum(got * ref, axis=1).min() >= 0.99999
    assert np.abs(got - ref).max() <= 1e-4
    sims = got @ got.T
    assert sims[~np.eye(len(TEXTS), dtype=bool)].max() < 0.999


def test_siglip_text_refused_for_other_weights(siglip_text, tmp_path, photo_dir):
    """A cache of the same model id but other weights: the text tower is refused."""
    from simx.run.encoder import Encoder
    from simx.embed.pipeline import embed_into_cache
    from simx.core.errors import SearchError
    from simx.retrieval.search import search_cache

    source = catalogue.get(SIGLIP_ID).source
    for weights, ok in (("random", True), ("sha256:" + "ab" * 32, False)):
        d = tmp_path / weights[:6]
        d.mkdir()
        os.symlink(siglip_text, d / siglip_text.name)
        side = siglip_text.with_name(f"{SIGLIP_ID}-text.tokenizer.json")
        os.symlink(side, d / side.name)
        image = build_tiny_model(d / f"{SIGLIP_ID}.onnx", model_id=SIGLIP_ID, dim=768,
                                 weights=weights, source=source)
        cache = d / "cache"
        embed_into_cache([photo_dir], Encoder(image, provider="cpu"), cache, progress=False)
        if ok:
            (res,) = search_cache(cache, texts=["a cat"], k=2, model=str(image))
            assert res["kind"] == "text" and len(res["hits"]) == 2
            assert Encoder(image, provider="cpu").embed_text(["a cat"]).shape == (1, 768)
        else:
            with pytest.raises(SearchError, match="other weights"):
                search_cache(cache, texts=["a cat"], k=2, model=str(image))
            with pytest.raises(SearchError, match="other weights"):
                Encoder(image, provider="cpu").embed_text(["a cat"])


def test_siglip_text_needs_its_tokenizer_file(siglip_text, tmp_path):
    from simx.run.text import TextEncoder

    d = tmp_path / "lonely"
    d.mkdir()
    os.symlink(siglip_text, d / siglip_text.name)
    with pytest.raises(ModelFileError, match="tokenizer file .* cannot be read"):
        TextEncoder(d / siglip_text.name, provider="cpu")
    side = siglip_text.with_name(f"{SIGLIP_ID}-text.tokenizer.json")
    (d / side.name).write_text(side.read_text().replace('"</s>"', '"</S>"', 1))
    with pytest.raises(ModelFileError, match="sha256"):
        TextEncoder(d / siglip_text.name, provider="cpu")


def test_siglip_export_without_tokenizer_says_so(torch_siglip, tmp_path, monkeypatch):
    """Hub unreachable, tokenizer not cached: a clear error and no file left behind."""
    import copy

    import open_clip

    from simx.export import weights
    from simx.export.text import TextExportError, export_text_tower

    real = open_clip.get_model_config

    def cfg(name):
        c = copy.deepcopy(real(name))
        c["text_cfg"]["hf_tokenizer_name"] = "simx-test/not-cached"
        return c

    monkeypatch.setattr(open_clip, "get_model_config", cfg)
    monkeypatch.setattr(weights, "hub_reachable", lambda timeout=3.0: False)
    out = tmp_path / "out"
    with pytest.raises(TextExportError, match="not in the local Hugging Face cache"):
        export_text_tower(catalogue.get(SIGLIP_ID), weights="random", output_dir=out,
                          model=torch_siglip, weights_label="random")
    assert not out.exists() or list(out.iterdir()) == []
