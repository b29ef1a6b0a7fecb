"""simx: fast, verified DINOv2 and OpenCLIP image embeddings with ONNX Runtime.

``import simx`` is cheap and never imports torch; heavy names load on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .errors import ModelFileError, ProviderError, SimxError

__version__ = "0.1.0"

_LAZY = {
    "Encoder": "simx.encoder",
    "FeatureCache": "simx.cache",
    "ModelSpec": "simx.spec",
    "PreprocessSpec": "simx.spec",
    "open_model": "simx.session",
}

__all__ = ["SimxError", "ModelFileError", "ProviderError", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'simx' has no attribute {name!r}")
