"""The ``simx-bench/1`` result schema: what a ``simx bench --json`` file must hold, and
reading, checking and writing such files (a stored baseline is one)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from simx.core.errors import SimxError

SCHEMA = "simx-bench/1"


class BaselineError(SimxError):
    """A baseline that cannot be compared with this run (other model, batch sizes, mode)."""


_REQUIRED: dict[str, tuple[str, ...]] = {
    "": ("schema", "timestamp", "machine", "model", "config", "reference", "cold_start", "results"),
    "machine": ("cpu_model", "logical_cores", "onnxruntime", "numpy", "simx", "timestamp"),
    "model": ("id", "precision", "spec_hash", "image_size", "gflops_per_image"),
    "config": ("providers", "threads", "batch_sizes", "mode"),
    "reference": ("gflops", "n"),
    "cold_start": ("import_simx_s", "session_create_s"),
}
_ROW = ("batch_size", "model_only", "end_to_end")
_MODEL_ONLY = ("img_s", "latency_ms", "gflops_s", "efficiency", "img_s_per_sgemm_gflops")


def validate_result(d: Any, where: str = "benchmark JSON") -> dict[str, Any]:
    """Check a result (or a stored baseline) has every field the gate and the table read."""
    if not isinstance(d, dict):
        raise BaselineError(f"{where}: not a JSON object")
    if d.get("schema") != SCHEMA:
        raise BaselineError(f"{where}: schema {d.get('schema')!r}, expected {SCHEMA!r}")
    for block, keys in _REQUIRED.items():
        obj = d if not block else d.get(block)
        if not isinstance(obj, dict):
            raise BaselineError(f"{where}: missing object {block!r}")
        missing = [k for k in keys if k not in obj]
        if missing:
            raise BaselineError(f"{where}: {block or 'top level'} lacks {', '.join(missing)}")
    rows = d["results"]
    if not isinstance(rows, list) or not rows:
        raise BaselineError(f"{where}: no results")
    for r in rows:
        missing = [k for k in _ROW if k not in r] + [
            f"model_only.{k}" for k in _MODEL_ONLY if k not in r.get("model_only", {})
        ]
        if missing:
            raise BaselineError(f"{where}: a result row lacks {', '.join(missing)}")
    return d


def load_result(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise BaselineError(f"cannot read baseline {path}: {e.strerror}") from None
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise BaselineError(f"baseline {path} is not valid JSON: {e}") from None
    return validate_result(d, where=str(path))


def write_result(result: dict[str, Any], path: str | os.PathLike[str]) -> None:
    p = Path(path)
    if p.parent and not p.parent.exists():
        p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(result, indent=2, sort_keys=False) + "\n")
