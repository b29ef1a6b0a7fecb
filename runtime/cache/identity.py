"""A cache's identity in ``cache.json``: which model, preprocessing, options, provider and
precision made its rows, and the checks that refuse rows made otherwise."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from simx.cache.format import FORMAT, FORMAT_VERSION, CacheMismatchError
from simx.core.version import __version__


def make_meta(spec: Any, count: int, failed: int,
              options: dict[str, Any] | None = None,
              model_path: str | os.PathLike[str] | None = None,
              run: dict[str, str] | None = None) -> dict[str, Any]:
    """cache.json. Deterministic (no timestamps), so a re-run and a clean run agree byte for byte.

    ``options`` are the runtime choices that change the numbers without changing the model
    (``fast`` resampling, ``exif_transpose``); a cache refuses rows made with others.
    ``model_path`` (absolute) lets ``simx search`` find the model from any folder; it is
    a hint, not identity (the spec hash is). ``run`` is the provider and precision that
    filled the cache (bf16 through OpenVINO is not fp32 on the CPU provider); without it,
    the file's own precision on the CPU provider.
    """
    p = spec.preprocess
    ran = run_of({"precision": spec.precision} | dict(run or {}))
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_id": spec.id,
        "spec_hash": spec.embedding_hash(),
        "source": spec.source,
        "weights": spec.weights,
        "precision": ran["precision"],
        "provider": ran["provider"],
        "dim": int(spec.dim),
        "normalize": bool(spec.normalize),
        "preprocess": {"resize": p.resize, "crop": p.crop, "interpolation": p.interpolation,
                       "mean": list(p.mean), "std": list(p.std)},
        "options": dict(sorted((options or {}).items())),
        "count": int(count),
        "failed": int(failed),
        "simx_version": __version__,
    } | ({"model_path": os.path.abspath(os.fspath(model_path))} if model_path else {})


def identity_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """The part of cache.json that ``make_meta`` writes (what a re-run compares), without the
    manifest's bookkeeping (segments, failures, generation)."""
    return {k: v for k, v in meta.items() if k not in ("segments", "failures", "generation",
                                                       "next_segment")}


def run_of(meta: dict[str, Any]) -> dict[str, str]:
    """The provider and precision a cache's rows were made with. Caches written before
    simx recorded them ran fp32 on the CPU provider (the only path there was)."""
    return {"provider": str(meta.get("provider") or "cpu"),
            "precision": str(meta.get("precision") or "fp32")}


def check_spec(directory: Path, meta: dict[str, Any], spec: Any) -> None:
    """Refuse rows of another model, weights or preprocessing (``--force`` rebuilds)."""
    want = spec.embedding_hash()
    if meta.get("spec_hash") != want:
        raise CacheMismatchError(
            f"cache {directory} was made by model {meta.get('model_id')!r} "
            f"(spec hash {meta.get('spec_hash')}); this model is {spec.id!r} "
            f"({want}), with other weights or preprocessing. Use another --cache, "
            "or --force to rebuild it"
        )


def _flags(options: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in options.items()) or "default options"


def check_options(directory: Path, meta: dict[str, Any], options: dict[str, Any]) -> None:
    """Refuse rows made with other runtime options (``--force`` rebuilds)."""
    if meta.get("options", {}) != options:
        raise CacheMismatchError(
            f"cache {directory} was made with {_flags(meta.get('options', {}))}, this run uses "
            f"{_flags(options)} (e.g. --fast, --exif-transpose), which change the "
            "embeddings. Use the same flags, another --cache, or --force to rebuild it"
        )


def check_run(directory: Path, meta: dict[str, Any], run: dict[str, str]) -> None:
    """Refuse to mix rows of another precision into a cache (``--force`` rebuilds it)."""
    old, new = run_of(meta), run_of({"precision": meta.get("precision")} | run)
    if old["precision"] != new["precision"]:
        raise CacheMismatchError(
            f"cache {directory} holds {old['precision']} embeddings (provider {old['provider']}); "
            f"this run makes {new['precision']} (provider {new['provider']}). Mixing precisions "
            "in one cache is refused: use the same --precision/--provider, another --cache, "
            "or --force to rebuild it")
