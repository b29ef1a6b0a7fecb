"""A model file is what its spec says (issue 12 items 10, 11, 18): weights hashed at export
and checked at open, inputs and outputs checked against the spec, text towers refused
where an image model is needed."""

from __future__ import annotations

import shutil
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from tiny_model import build_tiny_model, tiny_spec  # noqa: E402

from simx.cache import CacheMismatchError
from simx.run.encoder import Encoder
from simx.core.errors import ModelFileError
from simx.embed.pipeline import embed_into_cache
from simx.run.session import open_model, read_spec
from simx.model.spec import ModelSpec, SpecError
from simx.model.weights_hash import weights_sha256


def _with_spec(path: Path, spec: ModelSpec, external: bool = False) -> Path:
    import onnx

    m = onnx.load(str(path))
    del m.metadata_props[:]
    m.metadata_props.add(key="simx", value=spec.to_json())
    if external:
        onnx.save(m, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=path.name + ".data", size_threshold=0)
    else:
        onnx.save(m, str(path))
    return path


def _hashed_tiny(path: Path, seed: int = 0, external: bool = False) -> Path:
    """The tiny model with the weights hash an export records."""
    build_tiny_model(path, seed=seed)
    if external:
        _with_spec(path, tiny_spec(), external=True)
    h = weights_sha256(path)
    return _with_spec(path, replace(tiny_spec(), weights_sha256=h), external=external)


def _flip_in_initializer(path: Path, name: str = "proj") -> None:
    import onnx

    m = onnx.load(str(path))
    raw = next(t for t in m.graph.initializer if t.name == name).raw_data
    data = bytearray(path.read_bytes())
    at = data.find(raw)
    assert at > 0
    data[at + len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(data))


# ------------------------------------------------------------------ item 10: weights identity
def test_hash_ignores_metadata_but_not_weights(tmp_path):
    p = _hashed_tiny(tmp_path / "a.onnx")
    h = weights_sha256(p)
    _with_spec(p, replace(tiny_spec(model_id="other"), weights_sha256=h))
    assert weights_sha256(p) == h  # the spec lives outside the hash
    q = _hashed_tiny(tmp_path / "b.onnx", seed=1)
    assert weights_sha256(q) != h
    assert read_spec(p).embedding_hash() != read_spec(q).embedding_hash()


def test_flipped_weight_byte_is_refused_at_open(tmp_path):
    p = _hashed_tiny(tmp_path / "m.onnx")
    open_model(p, provider="cpu")
    _flip_in_initializer(p)
    with pytest.raises(ModelFileError, match="weights do not match the hash recorded at export"):
        open_model(p, provider="cpu")


def test_external_data_is_hashed_by_content_not_location(tmp_path):
    p = _hashed_tiny(tmp_path / "m.onnx", external=True)
    h = weights_sha256(p)
    open_model(p, provider="cpu")
    # move the pair and point the model at the renamed data: same weights, same hash
    import onnx

    d = tmp_path / "moved"
    d.mkdir()
    m = onnx.load(str(p), load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "renamed.data"
    onnx.save(m, str(d / "m.onnx"))
    shutil.copy(tmp_path / "m.onnx.data", d / "renamed.data")
    assert weights_sha256(d / "m.onnx") == h
    data = bytearray((d / "renamed.data").read_bytes())
    data[len(data) // 2] ^= 0x01
    (d / "renamed.data").write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="weights do not match"):
        open_model(d / "m.onnx", provider="cpu")


def test_files_without_a_hash_still_open(tmp_path):
    p = build_tiny_model(tmp_path / "old.onnx")
    assert read_spec(p).weights_sha256 is None
    open_model(p, provider="cpu")


def test_other_weights_same_metadata_refused_by_the_cache(tmp_path, rgb_photos):
    from PIL import Image

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for n, a in list(rgb_photos.items())[:3]:
        Image.fromarray(a[::4, ::4]).save(imgs / f"{n}.jpg")
    a = _hashed_tiny(tmp_path / "a" / "tiny-test.onnx", seed=0)
    b = _hashed_tiny(tmp_path / "b" / "tiny-test.onnx", seed=1)  # same id, same preprocessing
    embed_into_cache([imgs], Encoder(a, provider="cpu"), tmp_path / "c", progress=False)
    with pytest.raises(CacheMismatchError):
        embed_into_cache([imgs], Encoder(b, provider="cpu"), tmp_path / "c", progress=False)


def test_export_records_the_weights_hash(exported):
    p = exported["dinov2-small"]
    spec = read_spec(p)
    assert spec.weights_sha256 == weights_sha256(p)


# ------------------------------------------------------------------ item 11: graph vs spec
@pytest.mark.parametrize("width", [1, 48])
def test_output_width_must_match_the_spec(tmp_path, width):
    p = build_tiny_model(tmp_path / "w.onnx", dim=width, with_spec=False)
    _with_spec(p, tiny_spec(dim=64))
    with pytest.raises(ModelFileError, match=rf"output embeddings is \['batch', {width}\]"):
        open_model(p, provider="cpu")


def test_input_size_must_match_the_spec(tmp_path):
    p = build_tiny_model(tmp_path / "s.onnx", image_size=32, with_spec=False)
    _with_spec(p, tiny_spec(image_size=48, resize=52))
    with pytest.raises(ModelFileError, match=r"metadata says \[batch, 3, 48, 48\]"):
        open_model(p, provider="cpu")


def test_fixed_batch_axis_is_refused(tmp_path):
    import onnx

    p = build_tiny_model(tmp_path / "b.onnx")
    m = onnx.load(str(p))
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    m.graph.output[0].type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(m, str(p))
    with pytest.raises(ModelFileError, match="batch axis .* is fixed at 1"):
        open_model(p, provider="cpu")


@pytest.mark.parametrize("change, match", [
    ({"std": [0.2, 0.0, 0.2]}, "<= 0"),
    ({"std": [0.2, -1.0, 0.2]}, "<= 0"),
    ({"mean": [float("nan"), 0.4, 0.4]}, "not all finite"),
])
def test_spec_preprocessing_must_be_sane(change, match):
    d = tiny_spec().to_dict()
    d["preprocess"].update(change)
    with pytest.raises(SpecError, match=match):
        ModelSpec.from_dict(d)


def test_spec_normalize_false_is_refused():
    d = tiny_spec().to_dict()
    d["normalize"] = False
    with pytest.raises(SpecError, match="normalize False is not supported"):
        ModelSpec.from_dict(d)


def test_distinct_images_still_distinct(tmp_path, rgb_photos):
    """The checks do not change what a valid model computes."""
    p = _hashed_tiny(tmp_path / "m.onnx")
    e = Encoder(p, provider="cpu").embed(list(rgb_photos.values())[:3])
    assert np.abs(e[0] - e[1]).max() > 1e-3


# ------------------------------------------------------------------ item 18: text towers
def test_text_tower_as_image_model_is_a_clear_error(tmp_path):
    p = build_tiny_model(tmp_path / "x-text.onnx", with_spec=False)
    _with_spec(p, replace(tiny_spec(), extra={"kind": "text", "image_model": "openclip-x"}))
    with pytest.raises(ModelFileError, match="text tower of openclip-x; use it with `simx search --text`"):
        Encoder(p, provider="cpu")
