"""``simx info``: what a model file or a cache folder is, in a few readable lines (or JSON).

A model's spec is read without building a session; a cache's summary without loading its
rows into memory beyond what ``FeatureCache`` maps."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from simx.core.errors import SimxError


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def model_info(model: str | os.PathLike[str]) -> dict[str, Any]:
    """The spec of a model file (path or exported id), plus its file sizes."""
    from simx.run.session import read_spec, resolve_model_path

    path = resolve_model_path(model)
    spec = read_spec(path)
    data = path.with_name(path.name + ".data")
    return {"kind": "model", "path": str(path.resolve()), "file_bytes": _size(path),
            "data_bytes": _size(data) if data.exists() else 0, "spec_hash": spec.embedding_hash(),
            "spec": spec.to_dict()}


def cache_info(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """A cache's model, identity and size."""
    from simx.cache import EMB_DIR, FAILED, META, META_DIR, FeatureCache

    d = Path(directory)
    c = FeatureCache(d)
    m = c.meta
    return {"kind": "cache", "path": str(d.resolve()), "model_id": m.get("model_id"),
            "model_path": m.get("model_path"), "spec_hash": m.get("spec_hash"),
            "weights": m.get("weights"), "precision": m.get("precision"),
            "provider": m.get("provider") or "cpu", "dim": c.dim,
            "rows": len(c), "failed": len(c.failures), "options": m.get("options", {}),
            "format_version": m.get("format_version"), "simx_version": m.get("simx_version"),
            "segments": len(m.get("segments", [])),
            "dead_rows": sum(len(s.get("dead", [])) for s in m.get("segments", [])),
            "files": {META: _size(d / META), FAILED: _size(d / FAILED),
                      **{f"{sub}/": sum(_size(p) for p in (d / sub).glob("*"))
                         for sub in (EMB_DIR, META_DIR)}}}


def info(target: str | os.PathLike[str]) -> dict[str, Any]:
    """A cache folder's summary, or a model's spec."""
    p = Path(target)
    if p.is_dir() and (p / "cache.json").exists():
        return cache_info(p)
    if p.is_dir():
        raise SimxError(f"{p} is a folder but not a simx feature cache (no cache.json)")
    return model_info(target)


def render(d: dict[str, Any]) -> str:
    """The human form of ``info``."""
    if d["kind"] == "cache":
        files = ", ".join(f"{n} {_mib(b)}" for n, b in d["files"].items())
        opts = ", ".join(f"{k}={v}" for k, v in d["options"].items()) or "default"
        weights = "RANDOM (meaningless for similarity)" if d["weights"] == "random" else d["weights"]
        return "\n".join([
            f"cache      {d['path']} (format {d['format_version']}, simx {d['simx_version']})",
            f"model      {d['model_id']}  spec hash {d['spec_hash']}",
            f"model file {d['model_path'] or '(not recorded)'}",
            f"weights    {weights}, {d['precision']} (provider {d['provider']})",
            f"rows       {d['rows']} x {d['dim']}, failed {d['failed']}",
            *([f"segments   {d['segments']}, dead rows {d['dead_rows']} (simx cache compact drops them)"]
              if d.get("segments") is not None else []),
            f"options    {opts}",
            f"files      {files}",
        ])
    s = d["spec"]
    p = s["preprocess"]
    weights = ("RANDOM: speed figures are real, similarities are meaningless"
               if s["weights"] == "random" else s["weights"])
    parity = s.get("parity") or {}
    par = ", ".join(f"{k} {v:.3g}" for k, v in parity.items()) or "not recorded"
    size = _mib(d["file_bytes"]) + (f" + {_mib(d['data_bytes'])} external data" if d["data_bytes"] else "")
    kind = "text tower" if s.get("extra", {}).get("kind") == "text" else "image model"
    return "\n".join([
        f"model      {s['id']} ({kind}, {s['family']} {s['variant']})",
        f"file       {d['path']} ({size})",
        f"source     {s['source']}",
        f"weights    {weights}",
        f"sha256     {s.get('weights_sha256') or '(not recorded: exported before simx hashed weights)'}",
        f"output     {s['dim']}-d, L2-normalized, {s['precision']}, opset {s['opset']}",
        f"input      {s['input_name']} [batch, 3, {s['image_size']}, {s['image_size']}]",
        f"preprocess resize {p['resize']} ({p.get('resize_mode', 'shortest')}, "
        f"{p.get('interpolation', 'bicubic')}) -> crop {p['crop']}, mean {p['mean']}, std {p['std']}",
        f"parity     {par}",
        f"spec hash  {d['spec_hash']}",
    ])
