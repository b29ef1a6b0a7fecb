"""simx: fast, verified DINOv2 and OpenCLIP image embeddings with ONNX Runtime.

``import simx`` is cheap and never imports torch; heavy names load on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from simx.core.errors import ModelFileError, ProviderError, SimxError

from .core.version import __version__

_LAZY = {
    "Encoder": "simx.run.encoder",
    "FeatureCache": "simx.cache.store",
    "ModelSpec": "simx.model.spec",
    "PreprocessSpec": "simx.model.spec",
    "open_model": "simx.run.session",
}

__all__ = ["SimxError", "ModelFileError", "ProviderError", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'simx' has no attribute {name!r}")
