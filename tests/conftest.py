"""Shared fixtures: real photos from scikit-image, and small models exported once per session.

Test tiers. Every test gets the markers of what it needs, found at collection from the
fixtures it uses and the source of its function and fixtures (see ``_needs``):
``torch`` (torch exports), ``chromium`` (the HTML reports in a browser), ``ray`` (a Ray
cluster) and ``network`` (a PyPI install). The fast, torch-free tier deselects all four:

    python3 -m pytest -q --fast

and then refuses to import torch at all, so a test that needs torch but was not marked
fails loudly instead of making the fast tier slow. (``-m "not torch and ..."`` selects
the same way; the plain command runs everything.)
"""

from __future__ import annotations

import functools
import inspect
import os
import re
import sys
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
    from simx.model import catalogue
    from simx.export.api import export_model

    out = {}
    for model_id in SMALL_MODELS:
        path = models_dir / f"{model_id}.onnx"
        if not (os.environ.get("SIMX_TEST_EXPORTS") and path.exists()):
            path = export_model(catalogue.get(model_id), weights="random", output_dir=models_dir)
        out[model_id] = path
    return out


# ----------------------------------------------------------------------------- tiers
_TORCH = re.compile(r"\b(import torch|from torch\b|torchvision|open_clip|import timm|from timm"
                    r"|simx\.export|export_model|from export\b)")
_FIXTURE_TIERS = {"exported": "torch", "ray_cluster": "ray", "browser": "chromium"}
_MODULE_TIERS = {"test_wheel": "network"}
TIERS = ("torch", "chromium", "ray", "network")


def _source(obj) -> str:
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):
        return ""


_TORCH_HELPERS: dict[str, re.Pattern | None] = {}


@functools.cache
def _imports_torch(path: str) -> bool:
    """Whether a test module imports torch or the exporter at its top (an import line or a
    module-level importorskip): then every test in it needs torch."""
    top = [ln for ln in Path(path).read_text().splitlines()
           if ln.startswith(("import ", "from ")) or "importorskip(" in ln]
    return any(_TORCH.search(ln) for ln in top)


def _torch_helpers(module) -> re.Pattern | None:
    """A pattern matching calls of the module's own functions that reach torch, directly or
    through one another (a test calling ``reference(...)`` that imports torchvision)."""
    if module.__name__ not in _TORCH_HELPERS:
        funcs = {n: _source(f) for n, f in vars(module).items()
                 if inspect.isfunction(f) and f.__module__ == module.__name__}
        tainted = {n for n, src in funcs.items() if _TORCH.search(src)}
        while True:
            pat = re.compile(r"\b(" + "|".join(map(re.escape, tainted)) + r")\b") if tainted else None
            more = {n for n, src in funcs.items() if n not in tainted and pat and pat.search(src)}
            if not more:
                break
            tainted |= more
        _TORCH_HELPERS[module.__name__] = pat
    return _TORCH_HELPERS[module.__name__]


def _needs(item) -> set[str]:
    """The tiers a collected test needs: by its fixtures, its module and the source of its
    function and of every fixture it uses (their own imports of torch or simx.export, or
    calls of the module's functions that reach torch)."""
    need = {t for f, t in _FIXTURE_TIERS.items() if f in item.fixturenames}
    mod = item.module.__name__ if item.module else ""
    if mod in _MODULE_TIERS:
        need.add(_MODULE_TIERS[mod])
    sources = [_source(getattr(item, "function", None))]
    info = getattr(item, "_fixtureinfo", None)
    for defs in (info.name2fixturedefs.values() if info else ()):
        sources += [_source(d.func) for d in defs]
    helpers = _torch_helpers(item.module) if item.module else None
    if (any(_TORCH.search(s) or (helpers and helpers.search(s)) for s in sources)
            or (item.module and _imports_torch(item.module.__file__))):
        need.add("torch")
    return need


def pytest_addoption(parser):
    parser.addoption("--fast", action="store_true",
                     help=f"the torch-free fast tier: deselect tests marked {', '.join(TIERS)}")


def _torch_blocked(config) -> bool:
    """--fast, or a marker expression that leaves torch out: torch is refused."""
    return bool(config.getoption("fast") or "not torch" in (config.getoption("markexpr") or ""))


def pytest_ignore_collect(collection_path, config):
    """With torch refused (--fast): a test module that imports torch (or the exporter) at the top is not collected."""
    if _torch_blocked(config) and collection_path.suffix == ".py" and collection_path.name.startswith("test_"):
        return _imports_torch(str(collection_path)) or None
    return None


def pytest_configure(config):
    for t in TIERS:
        config.addinivalue_line("markers", f"{t}: needs {t} (a test tier; see tests/conftest.py)")
    if _torch_blocked(config):
        sys.modules.setdefault("torch", None)  # an unmarked torch test fails, never slows the tier


def pytest_collection_modifyitems(config, items):
    keep, drop = [], []
    for item in items:
        need = _needs(item)
        for t in sorted(need):
            item.add_marker(getattr(pytest.mark, t))
        (drop if need and config.getoption("fast") else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
