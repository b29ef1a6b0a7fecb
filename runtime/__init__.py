"""simx: fast, verified DINOv2, DINOv3 and OpenCLIP image embeddings with ONNX Runtime.

The public API is ``__all__``; everything else is importable from its room (see
docs/architecture.md) but may move. ``import simx`` is cheap and never imports torch:
the names below load their module on first use.

    import simx
    enc = simx.Encoder("dinov2-small")             # an exported .onnx file or its id
    feats = enc.embed(["a.jpg", "b.png"])          # float32 [2, D], L2-normalized
    cache = simx.FeatureCache("feats/")            # a cache folder written by `simx embed`
    hits = simx.search("feats/", queries=["a.jpg"], k=5)
    print(simx.info("feats/"))
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from simx.core.errors import ModelFileError, ProviderError, SearchError, SimxError
from simx.core.version import __version__

_LAZY = {
    "Encoder": ("simx.run.encoder", "Encoder"),
    "TextEncoder": ("simx.run.text", "TextEncoder"),
    "FeatureCache": ("simx.cache", "FeatureCache"),
    "search": ("simx.retrieval.search", "search_cache"),
    "topk": ("simx.retrieval.topk", "topk"),
    "info": ("simx.report.info", "info"),
    "open_model": ("simx.run.session", "open_model"),
    "read_spec": ("simx.run.session", "read_spec"),
    "ModelSpec": ("simx.model.spec", "ModelSpec"),
    "PreprocessSpec": ("simx.model.spec", "PreprocessSpec"),
    "CacheError": ("simx.cache", "CacheError"),
    "ImageError": ("simx.images.decode", "ImageError"),
}

__all__ = ["SimxError", "ModelFileError", "ProviderError", "SearchError", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(import_module(module), attr)
        globals()[name] = value  # later look-ups skip this hook
        return value
    raise AttributeError(f"module 'simx' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
