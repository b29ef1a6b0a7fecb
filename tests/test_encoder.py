"""simx.Encoder: model loading, batching, per-image failures, and end-to-end parity with
the torch reference pipeline (PIL + torchvision) on real photos."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from tiny_model import build_tiny_model  # noqa: E402

from simx import Encoder, ModelFileError, ProviderError
from simx.run.encoder import EmbedError
from simx.images.decode import load_rgb


@pytest.fixture(scope="module")
def enc(tiny_enc) -> Encoder:
    return tiny_enc


@pytest.fixture(scope="module")
def paths(photo_dir) -> list[Path]:
    return sorted(photo_dir.iterdir())


def test_attributes(enc, tiny):
    assert enc.spec.id == "tiny-test" and enc.dim == 16 and enc.path == tiny
    assert enc.providers == ["CPUExecutionProvider"]
    assert enc.default_batch_size == 8 and enc.workers >= 1
    assert "tiny-test" in repr(enc)


def test_model_id_resolves_in_models_dir(tiny, monkeypatch):
    monkeypatch.setenv("SIMX_MODELS_DIR", str(tiny.parent))
    assert Encoder("tiny-test", provider="cpu").path == tiny


def test_bad_models_fail_with_one_line(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not onnx")
    with pytest.raises(ModelFileError, match="not a loadable ONNX model"):
        Encoder(junk)
    bare = build_tiny_model(tmp_path / "bare.onnx", with_spec=False)
    with pytest.raises(ModelFileError, match="no simx metadata"):
        Encoder(bare)
    with pytest.raises(ModelFileError, match="no model"):
        Encoder("no-such-model-id")


def test_cuda_is_never_a_silent_fallback(tiny):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA is available here")
    with pytest.raises(ProviderError, match="not available"):
        Encoder(tiny, provider="cuda")


def test_paths_and_arrays_agree_and_order_is_kept(enc, paths):
    arrays = [load_rgb(p) for p in paths]
    a = enc.embed(paths)
    b = enc.embed(arrays)
    assert a.dtype == np.float32 and a.shape == (len(paths), enc.dim)
    np.testing.assert_array_equal(a, b)
    mixed = enc.embed([arrays[3], paths[0], arrays[1]])
    np.testing.assert_array_equal(mixed, a[[3, 0, 1]])
    # distinct photos, distinct embeddings (no collapsed random model)
    d = np.abs(a[:, None] - a[None]).max(-1)
    assert (d + np.eye(len(a)) > 1e-3).all()


def test_result_does_not_depend_on_batch_or_workers(tiny, paths):
    """What makes an incremental cache equal a clean run: an image's embedding must not
    depend on its batch mates. ORT's CPU kernels give bit-identical rows here."""
    ref = Encoder(tiny, "cpu", threads=1, workers=1).embed(paths, batch_size=1)
    for bs, workers, threads in ((3, 3, 2), (8, 2, 1), (len(paths) + 5, 1, 2)):
        got = Encoder(tiny, "cpu", threads=threads, workers=workers).embed(paths, batch_size=bs)
        np.testing.assert_array_equal(got, ref)


def test_dynamic_int8_runs_per_image_by_default(tmp_path, paths):
    """Dynamic int8 quantizes activations per batch; per-image runs keep results batch-free."""
    q = build_tiny_model(tmp_path / "q.onnx", dynamic_int8=True)
    enc = Encoder(q, "cpu")
    assert enc.per_image
    ref = enc.embed(paths, batch_size=1)
    np.testing.assert_array_equal(enc.embed(paths, batch_size=8), ref)
    batched = Encoder(q, "cpu", per_image=False).embed(paths, batch_size=8)
    assert np.abs(batched - ref).max() > 0  # what per_image protects against


def test_bad_image_raises_in_embed_but_is_reported_by_iter_embed(enc, paths, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_text("not a jpeg")
    items = [paths[0], bad, paths[1], paths[2]]
    with pytest.raises(EmbedError, match="bad.jpg"):
        enc.embed(items)
    batches = list(enc.iter_embed(items, batch_size=2))
    got = sorted(i for b in batches for i in b.indices)
    fails = [f for b in batches for f in b.failures]
    assert got == [0, 2, 3] and [i for i, _ in fails] == [1] and fails[0][1]
    # a failure does not shrink the batch the model sees
    assert [len(b.indices) for b in batches] == [2, 1]
    with pytest.raises(EmbedError, match="RGB uint8"):
        enc.embed([np.zeros((4, 4), np.uint8)])
    assert enc.embed([]).shape == (0, enc.dim)


# ----------------------------------------------------------------------------- parity
def _torchvision_pixels(path: Path, spec) -> np.ndarray:
    """The reference preprocessing: PIL.Image.open().convert('RGB') + torchvision."""
    from PIL import Image
    from torchvision import transforms as T

    p = spec.preprocess
    tf = T.Compose([
        T.Resize(p.resize, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(p.crop),
        T.ToTensor(),
        T.Normalize(p.mean, p.std),
    ])
    with Image.open(path) as im:
        return tf(im.convert("RGB")).numpy()


@pytest.mark.parametrize("model_id", ["dinov2-small", "openclip-vit-b-32-laion2b_s34b_b79k"])
def test_end_to_end_matches_torch_reference(exported, model_id, paths):
    """simx (OpenCV decode + exact resize + ORT) vs the reference users run today:
    PIL.Image.open().convert('RGB') + torchvision transforms + the torch model, built
    by simx.export.families with the same seeded random weights the export used."""
    import torch

    from simx.model import catalogue
    from simx.export.families import build

    enc = Encoder(exported[model_id], provider="cpu")
    spec = enc.spec
    got = enc.embed(paths, batch_size=4)
    built = build(catalogue.get(model_id), "random", spec.image_size)
    x = torch.from_numpy(np.stack([_torchvision_pixels(p, spec) for p in paths]))
    with torch.no_grad():
        ref = built.module.eval()(x).float().numpy()
    cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() >= 0.9999, dict(zip((p.name for p in paths), cos.round(6)))
    if spec.normalize:
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # and the photos are told apart (random weights must not collapse)
    g = got / np.linalg.norm(got, axis=1, keepdims=True)
    assert (np.abs(g @ g.T)[~np.eye(len(g), dtype=bool)] < 0.9999).all()
