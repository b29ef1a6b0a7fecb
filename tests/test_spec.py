"""The simx metadata document: round trips, validation and the embedding hash."""

from __future__ import annotations

import json

import pytest

from simx.model import catalogue
from simx.model.spec import ModelSpec, PreprocessSpec, SpecError, read_spec_from_metadata


def _spec(**over) -> ModelSpec:
    e = catalogue.get("dinov2-small")
    kw = dict(id=e.id, family=e.family, variant=e.variant, source=e.source, weights="random",
              image_size=224, dim=e.dim, normalize=True, preprocess=e.preprocess(224))
    kw.update(over)
    return ModelSpec(**kw)


def test_round_trip_is_lossless():
    s = _spec(parity={"max_abs": 1e-6, "min_cosine": 0.999999}, gflops=4.6,
              fusions={"MultiHeadAttention": 12})
    again = ModelSpec.from_json(s.to_json())
    assert again == s
    assert json.loads(again.to_json()) == json.loads(s.to_json())


def test_dinov2_preprocess_is_the_official_eval_transform():
    p = catalogue.get("dinov2-small").preprocess(224)
    assert (p.resize, p.crop, p.interpolation) == (256, 224, "bicubic")
    assert p.mean == catalogue.IMAGENET_MEAN and p.std == catalogue.IMAGENET_STD
    assert catalogue.get("dinov2-base").preprocess(448).resize == 512


def test_image_size_must_be_a_multiple_of_the_patch():
    with pytest.raises(ValueError, match="multiple of .* patch size 14"):
        catalogue.get("dinov2-small").preprocess(225)
    with pytest.raises(ValueError, match="patch size 32"):
        catalogue.get("openclip-vit-b-32-openai").preprocess(240)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.pop("dim"), "lacks dim"),
        (lambda d: d["preprocess"].pop("mean"), "malformed"),
        (lambda d: d["preprocess"].update(interpolation="nearest"), "interpolation"),
        (lambda d: d["preprocess"].update(crop=300), "crop 300 is larger"),
        (lambda d: d.update(image_size=336), "crop 224 != image_size 336"),
        (lambda d: d.update(schema=99), "newer than this simx"),
    ],
)
def test_bad_metadata_is_a_clear_error(mutate, message):
    d = _spec().to_dict()
    mutate(d)
    with pytest.raises(SpecError, match=message):
        ModelSpec.from_dict(d)


def test_missing_or_unparsable_metadata():
    with pytest.raises(SpecError, match="no simx metadata"):
        read_spec_from_metadata({"other": "x"})
    with pytest.raises(SpecError, match="not valid JSON"):
        read_spec_from_metadata({"simx": "{not json"})


def test_embedding_hash_tracks_what_changes_the_numbers():
    base = _spec()
    assert base.embedding_hash() == _spec(parity={"max_abs": 1.0}).embedding_hash()
    assert base.embedding_hash() != _spec(precision="int8").embedding_hash()
    assert base.embedding_hash() != _spec(weights="sha256:abc").embedding_hash()
    other_pre = PreprocessSpec(resize=224, crop=224, mean=(0.5,) * 3, std=(0.5,) * 3)
    assert base.embedding_hash() != _spec(preprocess=other_pre).embedding_hash()
