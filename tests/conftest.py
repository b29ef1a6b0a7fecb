"""Shared fixtures: real photos from scikit-image, and small models exported once per session."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from tiny_model import tiny, tiny_enc  # noqa: F401  (fixtures for every test module)

# Real photos bundled with scikit-image (no network). Colour, grey and RGBA.
PHOTO_NAMES = (
    "astronaut",          # 512x512
    "coffee",             # 400x600
    "chelsea",            # 300x451
    "rocket",             # 427x640
    "hubble_deep_field",  # 872x1000
    "immunohistochemistry",
    "colorwheel",         # 370x371
    "stereo_motorcycle",  # 500x741
    "camera",             # grey 512x512
    "page",               # grey 191x384
)


def load_photo(name: str) -> np.ndarray:
    """An RGB (or grey) uint8 array from skimage.data."""
    import skimage.data

    a = getattr(skimage.data, name)()
    if isinstance(a, tuple):
        a = a[0]
    return np.ascontiguousarray(a)


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    """Name -> uint8 array (H, W, 3) or (H, W) for grey photos."""
    return {n: load_photo(n) for n in PHOTO_NAMES}


@pytest.fixture(scope="session")
def rgb_photos(photos) -> dict[str, np.ndarray]:
    """The colour photos only, as (H, W, 3) RGB uint8."""
    return {n: a for n, a in photos.items() if a.ndim == 3 and a.shape[2] == 3}


@pytest.fixture(scope="session")
def photo_dir(tmp_path_factory, photos) -> Path:
    """A folder of real photos saved as JPEG (quality 95) and PNG, as users have them."""
    from PIL import Image

    d = tmp_path_factory.mktemp("photos")
    for i, (n, a) in enumerate(photos.items()):
        ext = "png" if i % 3 == 2 else "jpg"
        Image.fromarray(a).save(d / f"{n}.{ext}", quality=95)
    return d


# Models exported once per test session with random weights (no hub here).
SMALL_MODELS = {
    "dinov2-small": ("dinov2", "small", False),
    "dinov2-small-reg": ("dinov2", "small", True),
    "openclip-vit-b-32-laion2b_s34b_b79k": ("openclip", "ViT-B-32", "laion2b_s34b_b79k"),
}


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    """Where the session's exports go. $SIMX_TEST_EXPORTS reuses a folder across runs
    (developer convenience only; CI leaves it unset and exports afresh)."""
    reuse = os.environ.get("SIMX_TEST_EXPORTS")
    if reuse:
        Path(reuse).mkdir(parents=True, exist_ok=True)
        return Path(reuse)
    return tmp_path_factory.mktemp("onnx_models")


@pytest.fixture(scope="session")
def exported(models_dir) -> dict[str, Path]:
    """id -> path of dinov2-small, dinov2-small-reg and ViT-B-32, exported with random weights."""
    from simx.model import catalogue as registry
    from simx.export.api import export_model

    out = {}
    for model_id in SMALL_MODELS:
        path = models_dir / f"{model_id}.onnx"
        if not (os.environ.get("SIMX_TEST_EXPORTS") and path.exists()):
            path = export_model(registry.get(model_id), weights="random", output_dir=models_dir)
        out[model_id] = path
    return out
