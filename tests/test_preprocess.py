"""Preprocessing parity with torchvision + PIL: bit-exact uint8 pixels and float32 tensors.

The reference is what users run today: torchvision's Compose on ``Image.fromarray(rgb)``.
Every comparison below is against it, on real photos from scikit-image and on the odd
sizes that break ports (1x1, 3x1000, crop offsets that ``round`` and ``floor`` disagree on,
12-megapixel photos).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from simx.images.preprocess import (
    FAST_MODE_ERROR,
    _exact_axis,
    crop_window,
    preprocess,
    preprocess_batch,
    resize_crop,
    resized_size,
)
from simx.model.spec import PreprocessSpec

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
DINO_SPEC = PreprocessSpec(resize=256, crop=224, mean=IMAGENET[0], std=IMAGENET[1])
CLIP_SPEC = PreprocessSpec(resize=224, crop=224, mean=CLIP[0], std=CLIP[1])
SPECS = {"dinov2": DINO_SPEC, "clip": CLIP_SPEC}


def _rgb(a: np.ndarray) -> np.ndarray:
    """Photos as the decoder gives them: HxWx3 (grey replicated, alpha dropped)."""
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    return np.ascontiguousarray(a[:, :, :3])


def ref_u8(rgb: np.ndarray, resize: int, crop: int) -> np.ndarray:
    """torchvision Resize(BICUBIC) + CenterCrop on the PIL image, as uint8 HxWx3."""
    import torchvision.transforms as T

    t = T.Compose([T.Resize(resize, interpolation=T.InterpolationMode.BICUBIC),
                   T.CenterCrop(crop)])
    return np.asarray(t(Image.fromarray(rgb)))


def ref_tensor(rgb: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """The full torchvision transform, float32 [3, crop, crop]."""
    import torchvision.transforms as T

    t = T.Compose([
        T.Resize(spec.resize, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(spec.crop),
        T.ToTensor(),
        T.Normalize(spec.mean, spec.std),
    ])
    return t(Image.fromarray(rgb)).numpy()


def noisy_photo(a: np.ndarray, width: int, height: int, seed: int = 0) -> np.ndarray:
    """A phone-sized photo: a real photo upscaled with PIL, plus sensor-like noise."""
    big = np.asarray(Image.fromarray(_rgb(a)).resize((width, height), Image.Resampling.BICUBIC))
    noise = np.random.default_rng(seed).integers(-6, 7, big.shape, dtype=np.int16)
    return np.clip(big.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def _diff(a: np.ndarray, b: np.ndarray) -> tuple[float, int]:
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return float(d.mean()), int(d.max())


# -- geometry helpers ------------------------------------------------------------------

@pytest.mark.parametrize("h,w,size,expected", [
    (1200, 1600, 256, (256, 341)),  # 341.33 truncated, not rounded
    (1600, 1200, 256, (341, 256)),
    (3, 1000, 256, (256, 85333)),
    (1, 1, 256, (256, 256)),
    (427, 640, 224, (224, 335)),  # 335.74 truncated
])
def test_resized_size_matches_torchvision(h: int, w: int, size: int, expected: tuple[int, int]):
    from torchvision.transforms.functional import _compute_resized_output_size

    assert resized_size(h, w, size) == expected
    assert list(expected) == _compute_resized_output_size((h, w), [size])


def test_crop_offset_uses_bankers_round():
    # (343 - 224) / 2 = 59.5 -> round() gives 60 (even), floor gives 59.
    assert crop_window(343, 224) == (60, 0)
    # (341 - 224) / 2 = 58.5 -> round() gives 58 (even), round-half-up would give 59.
    assert crop_window(341, 224) == (58, 0)
    # Smaller than the crop: padded (crop - n) // 2 before, the image starts inside.
    assert crop_window(201, 224) == (-11, 11)


def test_box_proof_accepts_dyadic_and_rejects_the_rest():
    # Short side of a 4:3 photo for DINOv2: 1200/256 = 4.6875 is dyadic, provably exact.
    assert _exact_axis(1200, 256, 16, 240) is not None
    # Long side: 1600/341 is not a dyadic fraction, so the full axis must be resampled.
    assert _exact_axis(1600, 341, 58, 282) is None
    # 6000/384 = 15.625: the long side of a 3:2 photo is exact too.
    assert _exact_axis(6000, 384, 80, 304) is not None


# -- exactness -------------------------------------------------------------------------

@pytest.mark.parametrize("model", sorted(SPECS))
def test_bit_exact_on_photos(photos, model):
    """The gate (mean |diff| <= 0.5 level) and more: every pixel and every float equal."""
    spec = SPECS[model]
    for name, a in photos.items():
        rgb = _rgb(a)
        ref = ref_u8(rgb, spec.resize, spec.crop)
        got = resize_crop(rgb, spec.resize, spec.crop)
        mean, worst = _diff(got, ref)
        assert mean <= 0.5, (name, mean, worst)  # the gate
        assert np.array_equal(got, ref), (name, mean, worst)
        tensor = preprocess(rgb, spec)
        assert tensor.dtype == np.float32 and tensor.shape == (3, spec.crop, spec.crop)
        assert np.array_equal(tensor, ref_tensor(rgb, spec)), name  # floats bit-identical


ODD_SIZES = [
    (1, 1),
    (3, 1000),
    (1000, 3),
    (2, 2),
    (256, 343),  # no resize at all, crop offset 59.5 -> 60 (round) vs 59 (floor)
    (512, 686),  # resized long side 343: offset rounds up under banker's rounding
    (1200, 1600),  # long side 341: offset 58.5 -> 58 under banker's, 59 half-up
    (1600, 1200),  # portrait: the proven box is on the horizontal pass
    (225, 301),
    (257, 1000),
    (224, 224),
    (223, 225),
    (1024, 1536),  # 3:2, both axes dyadic: both boxes proven
    (700, 333),
]


@pytest.mark.parametrize("h,w", ODD_SIZES)
@pytest.mark.parametrize("model", sorted(SPECS))
def test_bit_exact_on_odd_sizes(h: int, w: int, model: str):
    spec = SPECS[model]
    rgb = np.random.default_rng(h * 7919 + w).integers(0, 256, (h, w, 3), dtype=np.uint8)
    ref = ref_u8(rgb, spec.resize, spec.crop)
    assert np.array_equal(resize_crop(rgb, spec.resize, spec.crop), ref)
    assert np.array_equal(preprocess(rgb, spec), ref_tensor(rgb, spec))


@pytest.mark.parametrize("h,w,resize", [(150, 90, 200), (3, 1000, 101), (99, 77, 150)])
def test_crop_larger_than_resize_pads_like_torchvision(h: int, w: int, resize: int):
    """The spec forbids crop > resize, but the geometry still matches torchvision's padding."""
    rgb = np.random.default_rng(1).integers(0, 256, (h, w, 3), dtype=np.uint8)
    assert np.array_equal(resize_crop(rgb, resize, 224), ref_u8(rgb, resize, 224))


@pytest.mark.parametrize("w,h", [(4000, 3000), (3000, 4000)])
def test_bit_exact_on_12_megapixel_photos(photos, w: int, h: int):
    rgb = noisy_photo(photos["chelsea"], w, h)
    for spec in (DINO_SPEC, CLIP_SPEC):
        assert np.array_equal(resize_crop(rgb, spec.resize, spec.crop),
                              ref_u8(rgb, spec.resize, spec.crop))


def test_grey_2d_input_is_treated_as_rgb(photos):
    grey = photos["camera"]
    assert np.array_equal(preprocess(grey, DINO_SPEC), preprocess(_rgb(grey), DINO_SPEC))


def test_rejects_wrong_inputs():
    with pytest.raises(ValueError, match="uint8"):
        preprocess(np.zeros((10, 10, 3), np.float32), DINO_SPEC)
    with pytest.raises(ValueError, match="HxWx3"):
        preprocess(np.zeros((10, 10, 4), np.uint8), DINO_SPEC)


def test_batch_equals_single(rgb_photos):
    imgs = list(rgb_photos.values())[:4]
    batch = preprocess_batch(imgs, DINO_SPEC)
    assert batch.shape == (4, 3, 224, 224)
    for i, rgb in enumerate(imgs):
        assert np.array_equal(batch[i], preprocess(rgb, DINO_SPEC))


# -- fast mode ---------------------------------------------------------------------------

def test_fast_mode_error_is_as_documented(photos):
    """fast=True stays within FAST_MODE_ERROR on the photos and on 12-megapixel ones."""
    cases = {n: _rgb(a) for n, a in photos.items()}
    cases["chelsea 4000x3000"] = noisy_photo(photos["chelsea"], 4000, 3000, seed=3)
    cases["rocket 3000x4000"] = noisy_photo(photos["rocket"], 3000, 4000, seed=4)
    worst_mean = worst_max = 0.0
    for name, rgb in cases.items():
        for spec in (DINO_SPEC, CLIP_SPEC):
            ref = ref_u8(rgb, spec.resize, spec.crop)
            fast = preprocess(rgb, spec, fast=True)
            exact = preprocess(rgb, spec)
            assert fast.shape == exact.shape
            # Back to uint8 levels through the inverse of the exact lookup.
            lut = (np.arange(256, dtype=np.float32) / np.float32(255))
            levels = np.stack([
                np.searchsorted(((lut - np.float32(m)) / np.float32(s)), fast[c])
                for c, (m, s) in enumerate(zip(spec.mean, spec.std))
            ], axis=-1)
            mean, worst = _diff(levels, ref)
            worst_mean, worst_max = max(worst_mean, mean), max(worst_max, worst)
            assert mean <= FAST_MODE_ERROR["mean_abs"], (name, mean)
            assert worst <= FAST_MODE_ERROR["max_abs"], (name, worst)
    print(f"fast mode: worst mean {worst_mean:.4f} levels, worst pixel {worst_max}")


# -- torch-free ---------------------------------------------------------------------------

def test_runtime_modules_do_not_import_torch():
    code = ("import sys, simx.images.preprocess, simx.images.decode; "
            "bad = [m for m in ('torch', 'torchvision') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
