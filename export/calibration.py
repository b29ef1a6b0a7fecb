"""Bundled photos for static int8: the calibration set and the retrieval evaluation set.

Static QDQ quantization fixes every activation's int8 scale at export time, from the
ranges seen on a calibration set; that is what makes int8 batch-invariant (no scale is
computed over a batch at run time). The images here are scikit-image's bundled photos
(offline, no hub), run through simx's *own* exact preprocessing
(``simx.images.preprocess.preprocess``), so the calibrated ranges are the ranges the runtime
feeds the model.

Three disjoint roles, so no gate judges the images it was tuned on:

* **gate photos** (``verify.PHOTOS``: astronaut, coffee, chelsea, rocket): the cosine
  gate against torch fp32; not used for calibration;
* **calibration** (:func:`calibration_images`): the other bundled photos (colour and
  grey, grey replicated to RGB), each mirrored left-right, plus a centre crop of each;
* **evaluation** (:func:`evaluation_images`): every bundled photo unmirrored and two
  off-centre crops of each (top-left and bottom-right 60 % boxes), 54 distinct images,
  used for the top-10 neighbour-overlap gate against fp32. Crops of one photo are each
  other's natural neighbours, so the gate checks that int8 keeps that structure.
"""

from __future__ import annotations

import numpy as np

from simx.core.errors import SimxError
from simx.model.spec import PreprocessSpec

#: Photos the cosine gate uses (``verify.PHOTOS`` is this); kept out of calibration.
GATE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
#: The other offline skimage photos (grey ones replicated to RGB); not ``cat``, which is
#: the same picture as ``chelsea``.
OTHER_PHOTOS = (
    "hubble_deep_field", "immunohistochemistry", "stereo_motorcycle", "colorwheel",
    "retina", "camera", "brick", "grass", "gravel", "moon", "coins", "clock", "page", "text",
)


def photo(name: str) -> np.ndarray:
    """A bundled scikit-image photo as HxWx3 uint8 RGB (no network)."""
    try:
        import skimage.data
    except ImportError:
        raise SimxError(
            "export verification needs scikit-image for its bundled photos: "
            "pip install scikit-image"
        ) from None

    a = getattr(skimage.data, name)()
    if isinstance(a, tuple):
        a = a[0]
    a = np.asarray(a)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    return np.ascontiguousarray(a[:, :, :3].astype(np.uint8))


def _crop(a: np.ndarray, frac: float, where: str) -> np.ndarray:
    h, w = a.shape[:2]
    ch, cw = max(1, int(h * frac)), max(1, int(w * frac))
    y, x = {"tl": (0, 0), "br": (h - ch, w - cw), "c": ((h - ch) // 2, (w - cw) // 2)}[where]
    return np.ascontiguousarray(a[y:y + ch, x:x + cw])


def calibration_images() -> list[np.ndarray]:
    """The calibration set: the non-gate photos mirrored, and their mirrored 70 % centre
    crops (28 images). (skimage's ``cat`` is ``chelsea``, a gate photo: left out.)"""
    out = []
    for n in OTHER_PHOTOS:
        m = np.ascontiguousarray(photo(n)[:, ::-1])
        out += [m, _crop(m, 0.7, "c")]
    return out


def evaluation_images() -> list[tuple[str, np.ndarray]]:
    """The retrieval evaluation set: (label, RGB) for every photo and two crops of it."""
    out = []
    for n in GATE_PHOTOS + OTHER_PHOTOS:
        a = photo(n)
        out += [(n, a), (f"{n}:tl60", _crop(a, 0.6, "tl")), (f"{n}:br60", _crop(a, 0.6, "br"))]
    return out


def pixels(images: list[np.ndarray], pre: PreprocessSpec) -> np.ndarray:
    """float32 [N, 3, S, S] through simx's exact preprocessing (what the runtime feeds)."""
    from simx.images.preprocess import preprocess_batch

    return preprocess_batch(images, pre)
