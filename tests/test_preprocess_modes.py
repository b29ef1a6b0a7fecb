"""Resize modes, filters and statistics, bit-exact to open_clip's own ``preprocess``.

The reference for an OpenCLIP tag is ``open_clip.transform.image_transform`` built from the
tag's ``PreprocessCfg`` (open_clip's defaults, overlaid with ``get_pretrained_cfg(model,
tag)``, size from the model config: what ``create_model_and_transforms`` builds, without
any weights), applied to ``Image.open(path)`` of a real photo saved as PNG. simx decodes
the same file with ``simx.images.decode.load_rgb`` and runs ``simx.images.preprocess.preprocess`` with
the exporter's converter (``simx.export.families._openclip.preprocess_from_openclip``)
of the same cfg. The float32 tensors must be equal, bit for bit, on photos of ordinary,
odd, tiny and very wide sizes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import load_photo
from simx.images.decode import load_rgb
from simx.images.preprocess import (
    FAST_MODE_ERROR_BY_MODE,
    preprocess,
    preprocess_batch,
    resize_crop,
    target_size,
)
from simx.model.spec import ModelSpec, PreprocessSpec, SpecError

open_clip = pytest.importorskip("open_clip")
from simx.export.families._openclip import preprocess_from_openclip  # noqa: E402

# One representative tag per (resize mode, interpolation, statistics) that open_clip 3.3.0
# ships; no tag uses `longest` or a non-square size, so those are built directly below.
TAGS = [
    ("ViT-B-32", "laion2b_s34b_b79k"),  # shortest, bicubic, OpenAI stats, 224
    ("ViT-B-16-SigLIP-256", "webli"),  # squash, bicubic, 0.5 / 0.5, 256
    ("ViT-H-14-378", "dfn5b"),  # squash, bicubic, OpenAI stats, 378
    ("MobileCLIP-S1", "datacompdr"),  # shortest, bilinear, mean 0 / std 1, 256
    ("PE-Core-B-16", "meta"),  # squash, bilinear, 0.5 / 0.5, 224
    ("ViT-L-14-CLIPA", "datacomp1b"),  # squash, bilinear, ImageNet stats, 224
]

PHOTO_NAMES = ("astronaut", "coffee", "chelsea", "rocket", "stereo_motorcycle")


def tag_cfg(model: str, tag: str) -> dict:
    """The tag's final PreprocessCfg as a dict, the way open_clip's factory merges it."""
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    cfg = merge_preprocess_dict(asdict(PreprocessCfg()), open_clip.get_pretrained_cfg(model, tag))
    cfg["size"] = open_clip.get_model_config(model)["vision_cfg"]["image_size"]
    return cfg


def oc_transform(cfg: dict):
    """open_clip's eval transform for a PreprocessCfg dict."""
    from open_clip.transform import PreprocessCfg, image_transform_v2

    return image_transform_v2(PreprocessCfg(**cfg), is_train=False)


@pytest.fixture(scope="module")
def photo_files(tmp_path_factory) -> dict[str, Path]:
    """Real photos as PNG files: skimage's, crops of odd sizes, tiny and very wide ones."""
    d = tmp_path_factory.mktemp("mode_photos")
    arrays = {n: load_photo(n) for n in PHOTO_NAMES}  # stereo_motorcycle: the left view
    ast, cof = arrays["astronaut"], arrays["coffee"]
    arrays["crop 333x517"] = ast[50:383, -517:]
    arrays["crop 517x333"] = ast[-517:, 11:344]
    arrays["tiny 31x47"] = cof[100:131, 200:247]
    arrays["tiny 47x31"] = cof[200:247, 100:131]
    arrays["wide 97x1000"] = np.ascontiguousarray(
        np.concatenate([ast[:97], cof[:97, :488]], axis=1))
    arrays["tall 1000x97"] = np.ascontiguousarray(
        np.concatenate([ast[:, :97], cof[:488, :97]], axis=0))
    arrays["1x1"] = ast[:1, :1]
    files = {}
    for n, a in arrays.items():
        p = d / (n.replace(" ", "_") + ".png")
        Image.fromarray(np.ascontiguousarray(a)).save(p)
        files[n] = p
    return files


def _compare(spec: PreprocessSpec, ref, files: dict[str, Path]) -> None:
    for name, p in files.items():
        with Image.open(p) as im:
            want = ref(im).numpy()
        got = preprocess(load_rgb(p), spec)
        assert got.shape == want.shape, (name, got.shape, want.shape)
        assert got.dtype == np.float32
        d = np.abs(got - want)
        assert np.array_equal(got, want), (name, float(d.max()), int((d > 0).sum()))


@pytest.mark.parametrize("model,tag", TAGS, ids=[f"{m}/{t}" for m, t in TAGS])
def test_bit_exact_to_open_clip_preprocess(model: str, tag: str, photo_files):
    cfg = tag_cfg(model, tag)
    spec = preprocess_from_openclip(cfg)
    # The spec carries what the tag says (the test would be vacuous on the wrong mode).
    assert (spec.resize_mode, spec.interpolation) == (cfg["resize_mode"], cfg["interpolation"])
    assert spec.mean == tuple(cfg["mean"]) and spec.std == tuple(cfg["std"])
    assert spec.crop_hw == (cfg["size"],) * 2
    _compare(spec, oc_transform(cfg), photo_files)


def test_every_open_clip_pair_is_bit_exact(photo_files):
    """All of open_clip's (model, tag) pairs: their distinct PreprocessCfgs, each bit-exact
    on the odd-size photos (the distinct cfgs are few; every pair maps to one of them)."""
    distinct: dict[str, dict] = {}
    for model, tag in open_clip.list_pretrained():
        cfg = tag_cfg(model, tag)
        spec = preprocess_from_openclip(cfg)  # every pair gives a valid spec
        assert ModelSpec.from_json(_model_spec(spec, cfg["size"]).to_json()).preprocess == spec
        distinct.setdefault(json.dumps(cfg, sort_keys=True, default=list), cfg)
    modes = {(c["resize_mode"], c["interpolation"]) for c in distinct.values()}
    assert {("shortest", "bicubic"), ("squash", "bilinear")} <= modes  # the sweep is real
    few = {k: photo_files[k] for k in ("chelsea", "crop 517x333", "tiny 31x47", "wide 97x1000")}
    for cfg in distinct.values():
        _compare(preprocess_from_openclip(cfg), oc_transform(cfg), few)


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
@pytest.mark.parametrize("fill", [0, 128])
def test_longest_is_open_clips_resize_keep_ratio_and_pad(interpolation: str, fill: int,
                                                         photo_files):
    """No tag uses `longest`; the reference is open_clip's transform for such a cfg."""
    cfg = dict(size=224, mean=(0.5,) * 3, std=(0.5,) * 3, resize_mode="longest",
               interpolation=interpolation, fill_color=fill)
    spec = preprocess_from_openclip(cfg)
    assert (spec.resize_mode, spec.fill) == ("longest", fill)
    _compare(spec, oc_transform(cfg), photo_files)


@pytest.mark.parametrize("mode", ["shortest", "longest", "squash"])
@pytest.mark.parametrize("size", [(224, 320), (256, 192)])
def test_non_square_sizes(mode: str, size: tuple[int, int], photo_files):
    """(h, w) sizes, as open_clip's transform takes them (bicubic: open_clip's non-square
    `shortest` path always uses ResizeKeepRatio's default, bicubic)."""
    cfg = dict(size=size, resize_mode=mode, interpolation="bicubic")
    spec = preprocess_from_openclip(cfg)
    assert spec.crop_hw == size and spec.crop == size
    _compare(spec, oc_transform(cfg), photo_files)
    batch = preprocess_batch([load_rgb(p) for p in list(photo_files.values())[:3]], spec)
    assert batch.shape == (3, 3, *size)


@pytest.mark.parametrize("mean,std", [
    ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
    ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ((0.1, 0.9, 0.33), (0.07, 1.7, 0.3)),
])
def test_any_mean_std_is_bit_exact(mean, std, photo_files):
    cfg = dict(size=192, mean=mean, std=std, resize_mode="squash", interpolation="bilinear")
    _compare(preprocess_from_openclip(cfg), oc_transform(cfg), photo_files)


@pytest.mark.parametrize("h,w", [(1200, 1600), (1600, 1200), (1024, 1536), (343, 256),
                                 (3, 1000), (1, 1), (225, 301), (700, 333)])
@pytest.mark.parametrize("mode,interpolation", [("shortest", "bilinear"),
                                                ("squash", "bilinear"), ("squash", "bicubic")])
def test_crop_smaller_than_resize_uses_the_proven_box_exactly(h: int, w: int, mode: str,
                                                              interpolation: str):
    """resize 256 -> crop 224 (DINOv2's geometry) for the new filter and mode: the short
    side's crop box is proven exact (1200/256 is dyadic) and must stay bit-exact for the
    bilinear filter's narrower support too. The reference is torchvision on PIL."""
    import torchvision.transforms as T

    from simx.images.preprocess import _exact_axis

    if (h, w) == (1200, 1600):
        assert _exact_axis(1200, 256, 16, 240, support=1) is not None  # the box is used
    mode_t = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC}
    size = 256 if mode == "shortest" else (256, 256)
    ref = T.Compose([T.Resize(size, interpolation=mode_t[interpolation]), T.CenterCrop(224)])
    rgb = np.random.default_rng(h * 31 + w).integers(0, 256, (h, w, 3), dtype=np.uint8)
    want = np.asarray(ref(Image.fromarray(rgb)))
    got = resize_crop(rgb, 256, 224, mode=mode, interpolation=interpolation)
    assert np.array_equal(got, want)


def test_modes_really_differ(photo_files):
    """Each mode gives other pixels on a non-square photo, so the parity tests can fail."""
    rgb = load_rgb(photo_files["crop 333x517"])
    outs = {(m, i): resize_crop(rgb, 224, 224, mode=m, interpolation=i)
            for m in ("shortest", "longest", "squash") for i in ("bicubic", "bilinear")}
    flat = [o.tobytes() for o in outs.values()]
    assert len(set(flat)) == len(flat)
    assert target_size(333, 517, 224, "longest") == (144, 224)  # round(333 * 224 / 517)
    assert target_size(333, 517, 224, "shortest") == (224, 347)  # int(), not round()
    assert target_size(333, 517, (224, 320), "shortest") == (224, 348)  # round(347.8)
    assert target_size(333, 517, 224, "squash") == (224, 224)


# -- fast mode on the new modes --------------------------------------------------------------

@pytest.fixture(scope="module")
def big_photos() -> dict[str, np.ndarray]:
    """1600x1200, 12-megapixel (both orientations) and a 4000x400 strip, with sensor noise."""
    out = {}
    for name in ("chelsea", "rocket"):
        for w, h in ((1600, 1200), (4000, 3000), (3000, 4000), (4000, 400)):
            big = np.asarray(Image.fromarray(load_photo(name)).resize(
                (w, h), Image.Resampling.BICUBIC))
            noise = np.random.default_rng(w + h).integers(-6, 7, big.shape, dtype=np.int16)
            out[f"{name} {w}x{h}"] = np.clip(big + noise, 0, 255).astype(np.uint8)
    return out


@pytest.mark.parametrize("mode,interpolation,size", [
    ("squash", "bilinear", 224), ("squash", "bicubic", 384), ("longest", "bicubic", 224),
    ("longest", "bilinear", 224), ("shortest", "bilinear", 256)])
def test_fast_mode_error_is_as_documented_for_every_mode(mode: str, interpolation: str,
                                                         size: int, big_photos):
    spec = PreprocessSpec(resize=size, crop=size, mean=(0.5,) * 3, std=(0.5,) * 3,
                          resize_mode=mode, interpolation=interpolation)
    bound = FAST_MODE_ERROR_BY_MODE[mode]
    for name, rgb in big_photos.items():
        exact = resize_crop(rgb, size, size, mode=mode, interpolation=interpolation)
        assert np.array_equal(_u8(preprocess(rgb, spec)), exact)  # the inverse below is exact
        d = np.abs(_u8(preprocess(rgb, spec, fast=True)) - exact.astype(np.int16))
        assert d.mean() <= bound["mean_abs"], (name, d.mean())
        assert d.max() <= bound["max_abs"], (name, d.max())


# -- the spec ---------------------------------------------------------------------------------

def _model_spec(pre: PreprocessSpec, image_size=224) -> ModelSpec:
    return ModelSpec(id="x", family="f", variant="v", source="s", weights="random",
                     image_size=image_size, dim=384, normalize=True, preprocess=pre)


IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


@pytest.mark.parametrize("pre,expected", [
    # Hashes computed by the spec.py of commit 5266a98, before these modes existed: files
    # and caches written then must keep their spec hash.
    (PreprocessSpec(256, 224, *IMAGENET), "d0e48f3941272a22"),
    (PreprocessSpec(224, 224, *CLIP), "6ef4dee7e44fa352"),
    (PreprocessSpec((224, 224), [224, 224], *CLIP), "6ef4dee7e44fa352"),  # folded to int
])
def test_hash_of_existing_square_specs_is_unchanged(pre: PreprocessSpec, expected: str):
    assert _model_spec(pre).embedding_hash() == expected
    assert "fill" not in pre.to_dict()


@pytest.mark.parametrize("pre,image_size", [
    (PreprocessSpec(224, 224, (0.0,) * 3, (1.0,) * 3, "squash", "bilinear"), 224),
    (PreprocessSpec(256, 256, (0.5,) * 3, (0.5,) * 3, "longest", "bicubic", fill=114), 256),
    (PreprocessSpec((224, 320), (224, 320), *CLIP, "shortest"), [224, 320]),
])
def test_new_specs_round_trip_through_json(pre: PreprocessSpec, image_size):
    s = _model_spec(pre, image_size)
    again = ModelSpec.from_json(s.to_json())
    assert again.preprocess == pre
    assert json.loads(again.to_json()) == json.loads(s.to_json())
    assert again.embedding_hash() == s.embedding_hash()
    # Every field that changes the pixels changes the hash.
    other_filter = "bilinear" if pre.interpolation == "bicubic" else "bicubic"
    other_mode = "squash" if pre.resize_mode != "squash" else "shortest"
    for change in (dict(interpolation=other_filter), dict(resize_mode=other_mode, fill=0)):
        changed = _model_spec(replace(pre, **change), image_size)
        assert changed.embedding_hash() != s.embedding_hash(), change
    if pre.fill:
        assert _model_spec(replace(pre, fill=0), image_size).embedding_hash() != s.embedding_hash()


@pytest.mark.parametrize("kwargs,message", [
    (dict(resize_mode="crop"), "unsupported resize_mode 'crop'"),
    (dict(interpolation="nearest"), "unsupported interpolation 'nearest'"),
    (dict(fill=7), "fill 7 needs resize_mode 'longest'"),
    (dict(fill=300, resize_mode="longest"), "not a uint8 level"),
    (dict(resize=(224, 200)), r"crop 224 is larger than resize \(224, 200\)"),
    (dict(resize=(224, 224, 3)), "not an int or a"),
    (dict(resize=0), "not a positive size"),
    (dict(crop="224"), "not an int or a"),
])
def test_bad_preprocess_specs_are_clear_errors(kwargs: dict, message: str):
    base = dict(resize=224, crop=224, mean=(0.5,) * 3, std=(0.5,) * 3)
    base.update(kwargs)
    with pytest.raises(SpecError, match=message):
        PreprocessSpec(**base)


def test_image_size_must_match_a_non_square_crop():
    pre = PreprocessSpec((224, 320), (224, 320), *CLIP)
    d = _model_spec(pre, [224, 320]).to_dict()
    d["image_size"] = [320, 224]
    with pytest.raises(SpecError, match="crop"):
        ModelSpec.from_dict(d)


# -- RGBA, LA and palette files: open_clip resizes before it converts to RGB -----------------
#
# open_clip's eval Compose is [Resize, CenterCrop, MaybeConvertMode("RGB"), ToTensor,
# Normalize], so Image.open(p) of an RGBA, LA or P file is resized in its own mode. simx
# decodes to RGB first (simx.images.decode.load_rgb, convert("RGB") pixels) and resizes that; the
# choice and its reasons are in simx.images.preprocess's docstring. These tests pin what that
# means, exactly: where the two agree, where they differ, and why.

def _alpha_ramp_files(tmp_path: Path) -> dict[str, Path]:
    """astronaut (512x512) with alpha 0 for x < 100, a ramp, and 255 for x >= 400."""
    rgb = load_photo("astronaut")
    cam = load_photo("camera")
    xx = np.arange(512)[None, :].repeat(512, axis=0)
    alpha = np.clip((xx - 100) * 255 // 300, 0, 255).astype(np.uint8)
    opaque = np.full((512, 512), 255, np.uint8)
    files = {
        "RGBA ramp": Image.fromarray(np.dstack([rgb, alpha]), "RGBA"),
        "LA ramp": Image.fromarray(np.dstack([cam, alpha]), "LA"),
        "RGBA opaque": Image.fromarray(np.dstack([rgb, opaque]), "RGBA"),
        "L": Image.fromarray(cam, "L"),
        "P 256 colours": Image.fromarray(rgb).quantize(256),
    }
    out = {}
    for n, im in files.items():
        p = tmp_path / (n.replace(" ", "_") + ".png")
        im.save(p)
        with Image.open(p) as again:
            assert again.mode == n.split()[0]  # the file really is in that mode
        out[n] = p
    return out


MODE_CASES = [("shortest", "bicubic", 224), ("squash", "bilinear", 224),
              ("squash", "bicubic", 384)]


@pytest.mark.parametrize("mode,interpolation,size", MODE_CASES)
def test_rgba_la_palette_equal_open_clip_on_the_rgb_conversion(mode, interpolation, size,
                                                               tmp_path):
    """simx == open_clip's preprocess(Image.open(p).convert("RGB")), for every mode of file;
    and == preprocess(Image.open(p)) itself for opaque RGBA and grey files."""
    cfg = dict(size=size, mean=(0.5,) * 3, std=(0.5,) * 3, resize_mode=mode,
               interpolation=interpolation)
    spec, ref = preprocess_from_openclip(cfg), oc_transform(cfg)
    for name, p in _alpha_ramp_files(tmp_path).items():
        got = preprocess(load_rgb(p), spec)
        with Image.open(p) as im:
            assert np.array_equal(got, ref(im.convert("RGB")).numpy()), name
            if name in ("RGBA opaque", "L"):
                assert np.array_equal(got, ref(im).numpy()), name


def _u8(t) -> np.ndarray:
    """A [3, H, W] tensor normalized with mean 0.5 / std 0.5 back to HxWx3 uint8 levels."""
    return np.rint((np.asarray(t) * 0.5 + 0.5) * 255).astype(np.int16).transpose(1, 2, 0)


@pytest.mark.parametrize("mode,interpolation,size", MODE_CASES)
def test_alpha_files_differ_only_where_the_filter_reads_transparent_pixels(
        mode, interpolation, size, tmp_path):
    """Pillow resizes RGBA and LA premultiplied by alpha: fully transparent pixels come out
    black and low-alpha ones lose colour bits. The difference is confined to output columns
    whose filter footprint touches a source column with alpha < 255 (x < 400 here)."""
    cfg = dict(size=size, mean=(0.5,) * 3, std=(0.5,) * 3, resize_mode=mode,
               interpolation=interpolation)
    spec, ref = preprocess_from_openclip(cfg), oc_transform(cfg)
    scale = 512 / size
    support = {"bicubic": 2, "bilinear": 1}[interpolation] * max(scale, 1.0)
    # Output column x reads source columns from int((x + 0.5) * scale - support + 0.5).
    first_clean = next(x for x in range(size) if int((x + 0.5) * scale - support + 0.5) >= 400)
    for name in ("RGBA ramp", "LA ramp"):
        p = _alpha_ramp_files(tmp_path)[name]
        got = _u8(preprocess(load_rgb(p), spec))
        with Image.open(p) as im:
            want = _u8(ref(im).numpy())
        d = np.abs(got - want)
        assert d[:, first_clean:].max() == 0, name  # opaque footprint: bit-exact
        assert d[:, : first_clean - 8].max() > 64, name  # transparent: a real difference
        print(f"{name} {mode} {interpolation} {size}: max {d.max()} levels, "
              f"mean {d.mean():.2f}, {(d.max(-1) > 0).mean():.0%} of pixels")


@pytest.mark.parametrize("mode,interpolation,size", MODE_CASES)
def test_palette_files_are_resized_nearest_by_the_reference(mode, interpolation, size,
                                                            tmp_path):
    """Pillow resizes P (and 1-bit) images with NEAREST whatever filter it is given, so
    open_clip's preprocess(Image.open(p)) of a palette file is, bit for bit, the NEAREST
    resize of its RGB pixels; simx applies the tag's filter instead."""
    import torchvision.transforms as T

    cfg = dict(size=size, mean=(0.5,) * 3, std=(0.5,) * 3, resize_mode=mode,
               interpolation=interpolation)
    spec, ref = preprocess_from_openclip(cfg), oc_transform(cfg)
    nearest = oc_transform(cfg)
    nearest.transforms[0].interpolation = T.InterpolationMode.NEAREST
    p = _alpha_ramp_files(tmp_path)["P 256 colours"]
    rgb = load_rgb(p)
    with Image.open(p) as im:
        want = ref(im).numpy()
    assert np.array_equal(want, nearest(Image.fromarray(rgb)).numpy())
    got = preprocess(rgb, spec)
    d = np.abs(_u8(got) - _u8(want))
    assert d.max() > 32  # the filters really differ on this photo
    print(f"P {mode} {interpolation} {size}: max {d.max()} levels, mean {d.mean():.2f}")


@pytest.mark.parametrize("cfg", [
    dict(size=224, resize_mode="shortest", interpolation="bicubic"),
    dict(size=224, mean=(0.5,) * 3, std=(0.5,) * 3, resize_mode="squash",
         interpolation="bilinear"),
    dict(size=384, mean=(0.5,) * 3, std=(0.5,) * 3, resize_mode="squash"),
    dict(size=224, resize_mode="longest", fill_color=0),
    dict(size=224, resize_mode="longest", fill_color=128, interpolation="bilinear"),
    dict(size=(224, 320), resize_mode="shortest"),
], ids=["shortest", "squash-bilinear", "squash-384", "longest", "longest-fill", "224x320"])
def test_preprocess_pil_matches_open_clip_in_every_file_mode(cfg: dict, tmp_path):
    """The opt-in: simx.images.preprocess.preprocess_pil(Image.open(p)) is open_clip's numbers for
    RGBA, LA, P and 1-bit files too (and for RGB and grey), on square and wide images."""
    from simx.images.preprocess import preprocess_pil

    spec, ref = preprocess_from_openclip(cfg), oc_transform(cfg)
    files = _alpha_ramp_files(tmp_path)
    wide = Image.open(files["RGBA ramp"]).crop((0, 100, 512, 197))  # 512x97 RGBA
    wide.save(tmp_path / "wide_rgba.png")
    files["RGBA wide"] = tmp_path / "wide_rgba.png"
    Image.open(files["P 256 colours"]).crop((30, 0, 77, 31)).save(tmp_path / "tiny_p.png")
    files["P tiny"] = tmp_path / "tiny_p.png"
    Image.open(files["L"]).convert("1").save(tmp_path / "bits.png")
    files["1-bit"] = tmp_path / "bits.png"
    for name, p in files.items():
        with Image.open(p) as im:
            want = ref(im).numpy()
        with Image.open(p) as im:
            got = preprocess_pil(im, spec)
        assert np.array_equal(got, want), (name, float(np.abs(got - want).max()))


# -- end to end: the file's spec drives the mode ---------------------------------------------

@pytest.mark.parametrize("cfg", [
    dict(size=32, mean=(0.5,) * 3, std=(0.5,) * 3, resize_mode="squash", interpolation="bilinear"),
    dict(size=32, mean=(0.0,) * 3, std=(1.0,) * 3, resize_mode="shortest",
         interpolation="bilinear"),
    dict(size=32, resize_mode="longest", fill_color=128),
], ids=["squash-bilinear", "shortest-bilinear-0-1", "longest-fill"])
def test_encoder_follows_the_files_preprocess_spec(cfg: dict, photo_files, tmp_path):
    """A model file whose spec says squash / bilinear / longest embeds photos exactly as
    onnxruntime does on open_clip's own preprocess of them (tiny random model)."""
    import onnx
    import onnxruntime as ort
    from onnx import helper
    from tiny_model import build_tiny_model

    from simx.run.encoder import Encoder

    path = build_tiny_model(tmp_path / "tiny-mode.onnx")
    m = onnx.load(str(path))
    spec = ModelSpec.from_json(dict((p.key, p.value) for p in m.metadata_props)["simx"])
    spec = replace(spec, preprocess=preprocess_from_openclip(cfg))
    del m.metadata_props[:]
    helper.set_model_props(m, {"simx": spec.to_json()})
    onnx.save(m, str(path))

    files = [photo_files[k] for k in ("crop 333x517", "wide 97x1000", "tiny 31x47", "coffee")]
    got = Encoder(path, provider="cpu", threads=1).embed([str(p) for p in files])
    ref = oc_transform(cfg)
    pixels = np.stack([ref(Image.open(p)).numpy() for p in files])
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    want = sess.run(None, {"pixel_values": pixels})[0]
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    shortest = replace(spec.preprocess, resize_mode="shortest", interpolation="bicubic", fill=0)
    assert not np.array_equal(preprocess(load_rgb(files[0]), shortest),
                              preprocess(load_rgb(files[0]), spec.preprocess))


@pytest.mark.parametrize("mode,interpolation", [("squash", "bicubic"), ("squash", "bilinear"),
                                                 ("shortest", "bilinear"), ("longest", "bicubic")])
def test_export_reference_transform_covers_every_mode(mode: str, interpolation: str, photo_files):
    """The export's parity probes are made by verify.reference_transform: for every mode a
    tag uses it is open_clip's own transform, and equals simx's preprocessing bit for bit."""
    pytest.importorskip("open_clip")
    from simx.export import verify
    from simx.images.preprocess import preprocess_pil

    spec = PreprocessSpec(resize=224, crop=224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                          resize_mode=mode, interpolation=interpolation)
    tf = verify.reference_transform(spec)
    for name in ("astronaut", "crop 333x517", "tiny 47x31"):  # odd sizes, both orientations
        im = Image.open(photo_files[name]).convert("RGB")
        want = tf(im).numpy()
        assert np.array_equal(preprocess_pil(im, spec).reshape(want.shape), want), (name, mode)
