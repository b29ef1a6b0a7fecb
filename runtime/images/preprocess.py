"""Resize, center-crop and normalize, bit-exact to torchvision / open_clip on PIL images.

The reference is ``Compose([Resize(resize, BICUBIC), CenterCrop(crop), ToTensor(),
Normalize(mean, std)])`` applied to ``PIL.Image.fromarray(rgb)``, and, for OpenCLIP tags,
open_clip's own ``image_transform`` for the tag's ``PreprocessCfg``. Three resize modes
(``PreprocessSpec.resize_mode``), each with Pillow's bicubic or bilinear filter:

* ``shortest``: torchvision ``Resize(int)``: the short side becomes ``resize``, the long side
  ``int(resize * long / short)`` (truncated), then ``CenterCrop(crop)``. With a non-square
  ``(h, w)`` resize it is open_clip's ``ResizeKeepRatio(longest=0)``: the scale is
  ``min(h / th, w / tw)`` and both sides are *rounded* (Python ``round``), then CenterCrop.
* ``longest``: open_clip's ``ResizeKeepRatio(longest=1)`` + ``CenterCropOrPad(fill)``: the
  scale is ``max(h / th, w / tw)``, sides rounded, then the short side is padded with
  ``fill`` (and cropped by round-half-even offsets, as CenterCrop does).
* ``squash``: ``Resize((h, w))``: both sides to the target, the aspect ratio is not kept;
  then CenterCrop (a no-op when ``crop == resize``, which is what open_clip's tags use).

Three things make a port
go wrong (DESIGN.md, "Resize differences"): Pillow's bicubic is antialiased (the kernel
widens when it downscales), uses a = -0.5 and rounds to 8 bits between its horizontal and
vertical passes; torchvision truncates the long side (``int(size * long / short)``); and
CenterCrop rounds its offset with Python's ``round()``, which rounds halves to even.

**How the exact path stays fast.** The resampling is Pillow's own C code (``Image.resize``),
so it is exact by construction; what simx adds is computing only the pixels that survive
the crop. Pillow's ``resize(box=...)`` resamples a sub-rectangle, but it recomputes the
filter from the box: ``scale = (in1 - in0) / out`` and ``center = in0 + (i + 0.5) * scale``
(Resample.c, ``precompute_coeffs``, with the box in C floats). The cropped resize uses the
very same filter taps as the full one only if that scale and every center are bit-for-bit
equal. :func:`_exact_axis` proves this per axis with exact rational arithmetic: it holds
when ``in_size / out_size`` is a dyadic fraction and every value involved is exactly
representable (then no operation rounds, on any compiler, with or without FMA). For the
short side that holds whenever ``resize`` is a power of two (DINOv2's 256: ``n/256``); for
the long side only by luck (6000x4000 yes, 4000x3000 no). OpenCLIP's crop equals its
resize, so its short side has nothing to save anyway. An axis that fails the proof is
resampled in full and sliced afterwards (torchvision's arithmetic, Pillow's pixels). On
the proven axis the source is also sliced to the rows (or columns) the filter reads, so
Pillow neither copies nor touches the rest.

Normalization is a per-channel 256-entry float32 lookup table built with the same float32
operations as ``ToTensor`` (``/ 255``) and ``Normalize`` (``(x - mean) / std``), so even the
floats are bit-identical to torchvision, and the lookup is cheaper than the arithmetic.

``fast=True`` trades exactness for speed, in every mode and filter, see
:data:`FAST_MODE_ERROR_BY_MODE`.

**RGBA, LA and palette files: simx converts to RGB first, open_clip resizes first.**
open_clip's eval ``Compose`` converts to RGB *after* Resize and CenterCrop, so its
``preprocess(Image.open(p))`` resizes such files in their own mode. simx decodes every file
to RGB (``convert("RGB")`` pixels, :mod:`simx.images.decode`) and resizes that, which is equal, bit
for bit, to ``preprocess(Image.open(p).convert("RGB"))``; for RGB, grey and fully opaque
RGBA files it is equal to ``preprocess(Image.open(p))`` too. Where they differ, and why simx
keeps its order (tests/test_preprocess_modes.py pins each statement):

* **P and 1-bit files**: Pillow resizes them with NEAREST whatever filter it is asked for,
  so the reference is a nearest-neighbour resize (aliased), not the tag's bicubic or
  bilinear. Measured on a 256-colour astronaut: up to 121 levels, mean 3.4-4.9.
* **RGBA and LA files**: Pillow resizes them premultiplied by alpha, so colour under fully
  transparent pixels becomes black and low-alpha pixels lose colour bits. The pixels differ
  only where the filter reads a pixel with alpha < 255 (up to 255 levels there).
* open_clip's own training loader for its web-scale data (``open_clip_train.data``,
  webdataset ``decode("pilrgb")``) converts to RGB *before* the transform, so simx's order is
  the one its models were trained on; it is also DINOv2's reference order, so every family
  shares one decode path.

Callers who need open_clip's numbers for such files can have them: :func:`preprocess_pil`
on ``Image.open(p)`` follows open_clip's order and is bit-exact to it in every file mode.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from fractions import Fraction
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image

from simx.model.spec import PreprocessSpec
from simx.model.spec import size_hw as _hw

FAST_MODE_ERROR: dict[str, float] = {
    # uint8 levels (0-255) of the cropped image, fast=True against torchvision+PIL, checked
    # by tests/test_preprocess.py::test_fast_mode_error_is_as_documented. Measured on this
    # machine: worst per-image mean 0.17 and worst pixel 2 on 12-megapixel photos (where
    # Pillow's reduce runs first); on the scikit-image photos mean <= 0.001, worst pixel 1.
    "mean_abs": 0.25,
    "max_abs": 3.0,
}
"""The bound ``fast=True`` stays within, in uint8 levels, with the measured figures above."""

FAST_MODE_ERROR_BY_MODE: dict[str, dict[str, float]] = {
    # The same bound per resize mode (bicubic and bilinear), checked by
    # tests/test_preprocess_modes.py::test_fast_mode_error_is_as_documented_for_every_mode on
    # 1600x1200, 12-megapixel and 4000x400 photos. Measured on this machine: squash worst
    # mean 0.37 (4000x400 -> 384x384) and worst pixel 5; longest worst mean 0.12, worst pixel
    # 7 (a few pixels on rocket's edges, where Pillow's block reduce runs first).
    "shortest": FAST_MODE_ERROR,
    "squash": {"mean_abs": 0.5, "max_abs": 6.0},
    "longest": {"mean_abs": 0.25, "max_abs": 8.0},
}
"""``fast=True``'s bound for each ``resize_mode``, in uint8 levels."""

# Pillow frees an image's memory blocks (16 MB each) straight back to the OS unless told to
# keep some; copying a 12-megapixel array into a fresh Image then page-faults ~45 MB every
# time (measured: 22 ms of CPU, against 5 ms with reuse). simx keeps up to this many freed
# blocks (128 MB at most), unless the user configured Pillow (PILLOW_BLOCKS_MAX) already.
PILLOW_BLOCKS_KEPT = 8
FAST_REDUCING_GAP = 3.0
_F64_MAX_EXACT = 1 << 53

_FILTERS: dict[str, tuple[Image.Resampling, int]] = {
    # Pillow filter and its support (Resample.c: bilinear 1.0, bicubic 2.0), which widens
    # by the scale when downscaling (the antialias).
    "bicubic": (Image.Resampling.BICUBIC, 2),
    "bilinear": (Image.Resampling.BILINEAR, 1),
}

Size = int | tuple[int, int]
"""A square side or a (height, width) pair, as ``PreprocessSpec`` holds them."""


def _filter(interpolation: str) -> tuple[Image.Resampling, int]:
    try:
        return _FILTERS[interpolation]
    except KeyError:
        raise ValueError(f"unsupported interpolation {interpolation!r} "
                         f"(one of {', '.join(sorted(_FILTERS))})") from None


def _keep_ratio_size(height: int, width: int, target: tuple[int, int],
                     longest: bool) -> tuple[int, int]:
    """open_clip's ``ResizeKeepRatio.get_params`` at eval (no random scale or aspect).

    ``ratio = max(h / th, w / tw)`` (longest) or the min (shortest), then each side is
    ``round(side / ratio)``, Python's round-half-to-even, in float64 exactly as there.
    The reference gives a 0-pixel side (and then fails) for extreme aspect ratios, such
    as 1000x1 -> longest 224; simx keeps at least one pixel there.
    """
    ratio_h, ratio_w = height / target[0], width / target[1]
    ratio = max(ratio_h, ratio_w) * float(longest) + min(ratio_h, ratio_w) * (1.0 - longest)
    return max(1, round(height * 1.0 / ratio)), max(1, round(width * 1.0 / ratio))


def target_size(height: int, width: int, resize: Size, mode: str = "shortest") -> tuple[int, int]:
    """The (h, w) the reference resizes an image of ``height x width`` to, before the crop."""
    if mode == "shortest":
        if isinstance(resize, int):
            return resized_size(height, width, resize)
        return _keep_ratio_size(height, width, _hw(resize), longest=False)
    if mode == "longest":
        return _keep_ratio_size(height, width, _hw(resize), longest=True)
    if mode == "squash":
        return _hw(resize)
    raise ValueError(f"unsupported resize_mode {mode!r} (one of longest, shortest, squash)")


def resized_size(height: int, width: int, size: int) -> tuple[int, int]:
    """torchvision's Resize(int) output (h, w): shortest side -> size, long side truncated.

    ``_compute_resized_output_size`` with ``max_size=None``: ``int(size * long / short)``,
    float division then truncation (not rounding).
    """
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    return new_h, new_w


def crop_window(length: int, crop: int) -> tuple[int, int]:
    """CenterCrop along one axis of ``length``: (offset into the padded axis, left padding).

    torchvision pads with zeros first when the image is smaller than the crop
    (``(crop - length) // 2`` before), then crops at ``int(round((padded - crop) / 2.0))``,
    Python's round-half-to-even included. Returns ``start`` such that output index ``i``
    reads input index ``start + i`` (negative or past the end means padding, i.e. zero).
    """
    pad_before = (crop - length) // 2 if crop > length else 0
    pad_after = (crop - length + 1) // 2 if crop > length else 0
    padded = length + pad_before + pad_after
    offset = int(round((padded - crop) / 2.0))
    return offset - pad_before, pad_before


def _center_crop_starts(h: int, w: int, crop: Size) -> tuple[int, int]:
    """Start row and column of the crop in the (unpadded) image, torchvision's way.

    torchvision skips the crop when padding already made both sides equal to the crop;
    the offsets then are exactly the padding, which ``crop_window`` also returns.
    """
    ch, cw = _hw(crop)
    top, _ = crop_window(h, ch)
    left, _ = crop_window(w, cw)
    return top, left


def _exact_axis(n: int, m: int, a: int, b: int,
                support: int = 2) -> tuple[float, float, int, int] | None:
    """Prove that resampling outputs [a, b) of an n -> m axis through a box is bit-exact.

    Returns ``(in0, in1, first, last)``: the box in source coordinates, shifted so that the
    source can be sliced to ``[first, last)`` (the inputs the filter reads), or None when
    the proof fails and the axis must be resampled in full.

    Pillow computes, in C: ``scale = (double)((float)in1 - (float)in0) / out`` and
    ``center_i = in0 + (i + 0.5) * scale``; the full resize uses in0 = 0, in1 = n, out = m.
    If n/m is exactly a double, and in0 = a*n/m, in1 = b*n/m and their difference are
    exactly floats, then every one of those operations is exact, so the box scale equals
    n/m and every box center equals the full resize's center: same bounds, same weights,
    same integer coefficients, same pixels. The same exactness makes the shift by ``first``
    (which moves ``center``, ``xmin`` and ``xmax`` by an integer) exact too. ``support`` is
    the filter's (bicubic 2, bilinear 1): it only decides which source rows are read.
    """
    scale = Fraction(n, m)
    if Fraction(float(scale)) != scale:  # n/m is not a dyadic fraction within a double
        return None
    if (2 * b + 1) * scale.numerator >= _F64_MAX_EXACT:  # centers (i + 0.5) * n/m exact
        return None
    filterscale = max(scale, Fraction(1))
    reach = support * filterscale  # the filter's support, widened when downscaling
    first = max(0, int(a * scale + scale / 2 - reach + Fraction(1, 2)))
    last = min(n, int((b - 1) * scale + scale / 2 + reach + Fraction(1, 2)))
    in0, in1 = a * scale - first, b * scale - first
    for v in (in0, in1, in1 - in0):
        if Fraction(float(np.float32(float(v)))) != v:  # not exactly a C float
            return None
    return float(in0), float(in1), first, last


def _tune_pillow_memory() -> None:
    """Let Pillow reuse freed memory blocks (see PILLOW_BLOCKS_KEPT); once per process."""
    global _tuned
    if _tuned:
        return
    _tuned = True
    try:
        if "PILLOW_BLOCKS_MAX" not in os.environ and Image.core.get_blocks_max() == 0:
            Image.core.set_blocks_max(PILLOW_BLOCKS_KEPT)
    except (AttributeError, ValueError):  # an exotic Pillow build: keep its defaults
        pass


_tuned = False


def _axis_plan(n: int, m: int, a: int, b: int,
               support: int = 2) -> tuple[float, float, int, int, int, int]:
    """How to get outputs [a, b) of an n -> m axis from Pillow, exactly.

    Returns (box start, box end, source slice start, source slice end, Pillow's output
    count, where output ``a`` lands in Pillow's result): the proven box when
    :func:`_exact_axis` succeeds, else the full axis, to be sliced afterwards.
    """
    proven = _exact_axis(n, m, a, b, support)
    if proven is not None:
        in0, in1, first, last = proven
        return in0, in1, first, last, b - a, 0
    return 0.0, float(n), 0, n, m, a


def resize_crop(rgb: np.ndarray, resize: Size, crop: Size, *, mode: str = "shortest",
                interpolation: str = "bicubic", fill: int = 0) -> np.ndarray:
    """Resize (``mode``, ``interpolation``) + CenterCrop(crop) on an HxWx3 uint8 array, exact.

    Returns a C-contiguous ``crop_h x crop_w x 3`` uint8 array equal, pixel for pixel, to
    the reference on ``PIL.Image.fromarray(rgb)``; where the resized image is smaller than
    the crop, the border is ``fill`` (torchvision's CenterCrop pads with 0, open_clip's
    ``CenterCropOrPad`` with the tag's ``fill_color``).
    """
    rgb = _as_rgb(rgb)
    resample, support = _filter(interpolation)
    h, w = rgb.shape[:2]
    nh, nw = target_size(h, w, resize, mode)
    ch, cw = _hw(crop)
    top, left = _center_crop_starts(nh, nw, crop)
    out = np.full((ch, cw, 3), fill, np.uint8) if fill else np.zeros((ch, cw, 3), np.uint8)

    # Output rows/columns of the resized image that land inside the crop.
    y0, y1 = max(top, 0), min(top + ch, nh)
    x0, x1 = max(left, 0), min(left + cw, nw)
    if y1 <= y0 or x1 <= x0:
        return out
    if (nh, nw) == (h, w):  # torchvision returns the image untouched
        out[y0 - top : y1 - top, x0 - left : x1 - left] = rgb[y0:y1, x0:x1]
        return out

    by0, by1, sy0, sy1, out_h, ry0 = _axis_plan(h, nh, y0, y1, support)
    bx0, bx1, sx0, sx1, out_w, rx0 = _axis_plan(w, nw, x0, x1, support)
    _tune_pillow_memory()
    src = Image.fromarray(np.ascontiguousarray(rgb[sy0:sy1, sx0:sx1]))
    res = np.asarray(src.resize((out_w, out_h), resample, box=(bx0, by0, bx1, by1)))
    out[y0 - top : y1 - top, x0 - left : x1 - left] = res[
        ry0 : ry0 + (y1 - y0), rx0 : rx0 + (x1 - x0)
    ]
    return out


def _as_rgb(rgb: np.ndarray) -> np.ndarray:
    """Accept HxWx3 uint8 (and HxW grey, replicated as convert("RGB") would)."""
    if rgb.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {rgb.dtype}")
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[:, :, None], 3, axis=2)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 RGB image, got shape {rgb.shape}")
    if rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise ValueError("empty image")
    return rgb


def _fast_resize_crop(rgb: np.ndarray, resize: Size, crop: Size, *, mode: str = "shortest",
                      interpolation: str = "bicubic", fill: int = 0) -> np.ndarray:
    """``fast=True``: Pillow resamples only the cropped box, and reduces big images first.

    Two shortcuts, both Pillow's own code: (1) the box is used on both axes even where
    :func:`_exact_axis` cannot prove it exact; the box's scale and centers then differ from
    the full resize in the last bits, which flips a rounding now and then (at most 1-2
    levels, on a few pixels in 10,000); (2) ``reducing_gap=3.0``: when the image is at least
    six times the output, Pillow first averages whole blocks of pixels (``Image.reduce``),
    then runs the filter on the smaller image, which Pillow documents as close to fair
    resampling. Images that are upscaled on either axis take the exact path: nothing to
    gain there. Every resize mode and filter works the same way.
    """
    rgb = _as_rgb(rgb)
    resample, _ = _filter(interpolation)
    h, w = rgb.shape[:2]
    nh, nw = target_size(h, w, resize, mode)
    if nh >= h or nw >= w:
        return resize_crop(rgb, resize, crop, mode=mode, interpolation=interpolation, fill=fill)
    ch, cw = _hw(crop)
    top, left = _center_crop_starts(nh, nw, crop)
    y0, y1 = max(top, 0), min(top + ch, nh)
    x0, x1 = max(left, 0), min(left + cw, nw)
    out = np.full((ch, cw, 3), fill, np.uint8) if fill else np.zeros((ch, cw, 3), np.uint8)
    sy, sx = h / nh, w / nw
    box = (x0 * sx, y0 * sy, min(x1 * sx, w), min(y1 * sy, h))
    _tune_pillow_memory()
    im = Image.fromarray(rgb)
    res = np.asarray(
        im.resize((x1 - x0, y1 - y0), resample, box=box, reducing_gap=FAST_REDUCING_GAP)
    )
    out[y0 - top : y1 - top, x0 - left : x1 - left] = res
    return out


@lru_cache(maxsize=32)
def _lut(mean: tuple[float, float, float], std: tuple[float, float, float]) -> np.ndarray:
    """[3, 256] float32: ToTensor + Normalize of every uint8 value, in torch's float32 ops."""
    v = np.arange(256, dtype=np.float32) / np.float32(255)
    m = np.asarray(mean, dtype=np.float32)[:, None]
    s = np.asarray(std, dtype=np.float32)[:, None]
    lut = (v[None, :] - m) / s
    lut.setflags(write=False)
    return lut


def normalize(crop_u8: np.ndarray, mean: Sequence[float], std: Sequence[float],
              out: np.ndarray | None = None) -> np.ndarray:
    """HxWx3 uint8 -> float32 [3, H, W]: ToTensor then Normalize, bit-identical to torch."""
    lut = _lut(tuple(float(x) for x in mean), tuple(float(x) for x in std))
    h, w = crop_u8.shape[:2]
    if out is None:
        out = np.empty((3, h, w), np.float32)
    for c in range(3):
        np.take(lut[c], crop_u8[:, :, c], out=out[c], mode="clip")  # uint8: always in range
    return out


def _resize_crop_spec(rgb: np.ndarray, spec: PreprocessSpec, fast: bool) -> np.ndarray:
    fn = _fast_resize_crop if fast else resize_crop
    return fn(rgb, spec.resize, spec.crop, mode=spec.resize_mode,
              interpolation=spec.interpolation, fill=spec.fill)


def preprocess_spec(spec: PreprocessSpec | Any) -> PreprocessSpec:
    """The PreprocessSpec of ``spec``: itself, or a ModelSpec's (``enc.spec.preprocess``), so
    callers may pass either."""
    return getattr(spec, "preprocess", spec)


def preprocess(rgb: np.ndarray, spec: PreprocessSpec | Any, *, fast: bool = False,
               out: np.ndarray | None = None) -> np.ndarray:
    """One HxWx3 uint8 RGB image -> float32 [3, crop_h, crop_w], the model's input.

    Exact by default: equal to the reference transform of ``spec`` (torchvision's Resize ->
    CenterCrop -> ToTensor -> Normalize, or open_clip's ``longest`` / ``squash`` variants)
    on ``PIL.Image.fromarray(rgb)``: uint8 pixels identical, floats identical.
    ``fast=True`` resamples only the cropped box on both axes even where that is not
    provably exact; its measured error is :data:`FAST_MODE_ERROR_BY_MODE` (uint8 levels,
    per resize mode; :data:`FAST_MODE_ERROR` for ``shortest``). ``out``
    (float32 [3, crop_h, crop_w]) is filled in place when given, e.g. a row of a batch.
    ``spec`` may be a PreprocessSpec or a ModelSpec (``Encoder(...).spec``).
    """
    spec = preprocess_spec(spec)
    cropped = _resize_crop_spec(rgb, spec, fast)
    return normalize(cropped, spec.mean, spec.std, out=out)


def preprocess_pil(im: Image.Image, spec: PreprocessSpec | Any, *,
                   out: np.ndarray | None = None) -> np.ndarray:
    """open_clip's order on a PIL image: resize and crop in the image's own mode, then RGB.

    Bit-exact to open_clip's ``preprocess(Image.open(p))`` for files of any mode (RGBA, LA,
    P, 1, ...), for callers that want the reference's numbers over simx's RGB-first order
    (see the module docstring for how the two differ). RGB and grey images take the fast
    exact path of :func:`preprocess` (the numbers are the same in both orders); other modes
    run Pillow's full resize, then the crop (Pillow pads with zeros in every band, as
    torchvision's pad with fill 0 does; ``fill`` is painted in every band, or as the palette
    index of a P image, as torchvision does), then ``convert("RGB")``. ``spec`` may be a
    PreprocessSpec or a ModelSpec.
    """
    spec = preprocess_spec(spec)
    if im.mode in ("RGB", "L"):
        return preprocess(np.asarray(im.convert("RGB")), spec, out=out)
    resample, _ = _filter(spec.interpolation)
    w, h = im.size
    nh, nw = target_size(h, w, spec.resize, spec.resize_mode)
    if (nh, nw) != (h, w):  # torchvision returns the image untouched
        im = im.resize((nw, nh), resample)
    top, left = _center_crop_starts(nh, nw, spec.crop)
    ch, cw = spec.crop_hw
    region = im.crop((left, top, left + cw, top + ch))
    padded = top < 0 or left < 0 or top + ch > nh or left + cw > nw
    if spec.fill and padded:
        bands = len(im.getbands())
        canvas = Image.new(im.mode, (cw, ch), spec.fill if bands == 1 else (spec.fill,) * bands)
        if im.mode in ("P", "PA"):
            canvas.putpalette(im.getpalette())
        y0, x0 = max(top, 0), max(left, 0)
        canvas.paste(im.crop((x0, y0, min(left + cw, nw), min(top + ch, nh))),
                     (x0 - left, y0 - top))
        region = canvas
    return normalize(np.asarray(region.convert("RGB")), spec.mean, spec.std, out=out)


def preprocess_batch(images: Sequence[np.ndarray], spec: PreprocessSpec | Any, *,
                     fast: bool = False) -> np.ndarray:
    """Several images -> float32 [N, 3, crop_h, crop_w], each exactly as :func:`preprocess`."""
    spec = preprocess_spec(spec)
    ch, cw = spec.crop_hw
    batch = np.empty((len(images), 3, ch, cw), np.float32)
    for i, rgb in enumerate(images):
        preprocess(rgb, spec, fast=fast, out=batch[i])
    return batch
