"""sim-bench's method YAML files (``configs/methods/*.yaml``), read as simx options.

Why: people migrating from sim-bench keep their config files. A file like::

    method: dinov2
    variant: "base"
    batch_size: 16
    device: "cpu"
    normalize: true
    distance: "cosine"
    cache_dir: "artifacts/dinov2"

becomes ``simx embed --config FILE``: model ``dinov2-base``, batch size 16, the CPU
provider, cache ``artifacts/dinov2``. Keys simx cannot honour are errors, not silently
different results.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from simx.run import providers
from simx.model import catalogue
from simx.core.errors import ProviderError, SimxError, first_line

SIMBENCH_KEYS = ("method", "variant", "model", "pretrained", "batch_size", "device", "normalize",
                 "distance", "cache_dir")
SIMX_KEYS = ("registers", "qkvb", "onnx", "threads")  # simx additions, all optional


def _dinov2(cfg: dict[str, Any], where: str) -> str:
    variant = cfg.get("variant") or cfg.get("model")
    if not variant:
        raise ConfigError(f"{where}: method dinov2 needs variant (small, base, large, giant)")
    return catalogue.dinov2(str(variant), bool(cfg.get("registers", False))).id


def _dinov3(cfg: dict[str, Any], where: str) -> str:
    variant = cfg.get("variant") or cfg.get("model")
    if not variant:
        raise ConfigError(f"{where}: method dinov3 needs variant (small, small_plus, base, large, "
                          "huge_plus)")
    tag = cfg.get("pretrained")
    return catalogue.dinov3(str(variant), bool(cfg.get("qkvb", False)),
                           str(tag) if tag else None).id


def _openclip(cfg: dict[str, Any], where: str) -> str:
    model, tag = cfg.get("model"), cfg.get("pretrained")
    if not model or not tag:
        raise ConfigError(f"{where}: method openclip needs model and pretrained")
    return catalogue.openclip(str(model), str(tag)).id


# sim-bench's ``method`` -> the catalogue id its keys name (one line per method).
METHODS = {"dinov2": _dinov2, "dinov3": _dinov3, "openclip": _openclip}
# Rankings by cosine and by Euclidean distance agree on L2-normalized vectors.
_DISTANCES = ("cosine", "euclidean", "l2")


MAX_CONFIG_BYTES = 1 << 20


class ConfigError(SimxError):
    """A method config simx cannot honour; the message names the key."""


def _load_yaml(path: Path) -> dict[str, Any]:
    try:
        import yaml
    except ImportError:  # pragma: no cover - PyYAML is in install_requires
        raise ConfigError("reading method configs needs PyYAML: pip install pyyaml") from None
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):  # a FIFO would block the read forever
            raise ConfigError(f"config {path} is not a regular file")
        if st.st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"config {path} is {st.st_size} bytes; a method config is a few lines")
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({first_line(e, 'syntax error')})") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: a method config is a mapping of keys (method, variant, ...)")
    return doc


def method_model_id(cfg: dict[str, Any], where: str = "config") -> str:
    """The registry id a sim-bench method config names (unknown names list the valid ones)."""
    method = cfg.get("method")
    if not isinstance(method, str) or method not in METHODS:
        raise ConfigError(f"{where}: method {method!r} is not one simx runs; "
                          f"supported: {', '.join(METHODS)}")
    try:
        return METHODS[method](cfg, where)
    except catalogue.UnknownModelError as e:
        raise ConfigError(f"{where}: {e}") from None


def load_method_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A sim-bench method YAML -> simx embed options.

    Returns ``{"model", "batch_size", "provider", "cache_dir", "threads"}`` (absent keys
    are None; ``model`` is an id or the ``onnx`` path) plus ``method`` for messages.
    Relative ``cache_dir`` stays relative to the working directory, as in sim-bench.
    """
    path = Path(path)
    cfg = _load_yaml(path)
    unknown = sorted(set(cfg) - set(SIMBENCH_KEYS) - set(SIMX_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}; "
                          f"known: {', '.join(SIMBENCH_KEYS + SIMX_KEYS)}")
    model_id = method_model_id(cfg, str(path))
    out: dict[str, Any] = {"method": cfg["method"], "model": cfg.get("onnx") or model_id,
                           "model_id": model_id, "batch_size": None, "provider": None,
                           "cache_dir": None, "threads": None}
    if cfg.get("batch_size") is not None:
        bs = cfg["batch_size"]
        if not isinstance(bs, int) or isinstance(bs, bool) or bs < 1:
            raise ConfigError(f"{path}: batch_size must be a positive integer, got {bs!r}")
        out["batch_size"] = bs
    if cfg.get("device") is not None:
        dev = str(cfg["device"]).lower().split(":")[0]  # "cuda:0" -> cuda
        try:  # the provider table's names and aliases (gpu -> cuda)
            out["provider"] = dev if dev == "auto" else providers.get(dev).name
        except ProviderError:
            raise ConfigError(f"{path}: device {cfg['device']!r} is not supported; "
                              f"choose from {', '.join(providers.CHOICES)}") from None
    if cfg.get("normalize") is False:
        raise ConfigError(f"{path}: normalize: false is not supported; simx embeddings are "
                          "always L2-normalized (cosine scores are their dot products)")
    dist = cfg.get("distance")
    if dist is not None and str(dist).lower() not in _DISTANCES:
        raise ConfigError(f"{path}: distance {dist!r} is not supported; simx ranks by cosine "
                          f"(same order as euclidean on normalized vectors)")
    if cfg.get("cache_dir"):
        out["cache_dir"] = str(cfg["cache_dir"])
    if cfg.get("threads") is not None:
        out["threads"] = int(cfg["threads"])
    return out


def apply_method_config(
    path: str | os.PathLike[str] | None,
    *,
    model: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    batch_size: int | None = None,
    provider: str | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """``simx embed`` options from ``--config`` and the command line; the command line wins.

    Pass ``None`` for an option the user did not give (for ``--provider``, whose default
    is "auto", check click's parameter source). Returns ``model``, ``cache_dir`` (Path),
    ``batch_size``, ``provider`` (default "auto") and ``threads``; a missing model or
    cache folder is an error that says where each can come from.
    """
    cfg = load_method_config(path) if path else {}
    out = {
        "model": model or cfg.get("model"),
        "cache_dir": cache_dir or cfg.get("cache_dir"),
        "batch_size": batch_size or cfg.get("batch_size"),
        "provider": provider or cfg.get("provider") or "auto",
        "threads": threads or cfg.get("threads"),
    }
    for key, flag in (("model", "--model"), ("cache_dir", "--cache")):
        if not out[key]:
            raise ConfigError(f"give {flag}" + (f" (or set {key} in {path})" if path else
                                               " (or --config FILE with a sim-bench method config)"))
    out["cache_dir"] = Path(out["cache_dir"])
    return out
