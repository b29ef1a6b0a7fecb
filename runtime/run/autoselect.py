"""``precision="auto"``: pick the fastest (provider, precision) path on this host that
keeps the file's answers, by measuring it, once per host and model.

Why measure: which path wins depends on the CPU's units (bf16 through OpenVINO is ~2.7x
onnxruntime's fp32 on an AVX512-BF16 EPYC, and slower than fp32 where bf16 is emulated),
on the model and on the installed packages; a rule written today is wrong on the next
machine. So a short calibration (a few batches of fixed pseudo-random pixels per path,
seconds in all) times every candidate path, gates each against the file's own output on
onnxruntime's CPU provider (min cosine per image >= ``GATES``), and keeps the fastest
that passes. An fp32 file's exported siblings in the same folder (``<stem>-int8.onnx``,
``<stem>-fp16.onnx``: the same model, weights and preprocessing at another precision,
each gated at its export against torch) are candidates too, gated against the fp32
file's output at their precision's gate: on an AVX512-VNNI EPYC, OpenVINO's runtime on
the static-QDQ int8 sibling measured 1.55x OpenVINO bf16 on the fp32 file (DINOv2-S,
batch 8), the fastest peer a user could pick. The decision is cached as JSON under the user cache folder
(``simx.run.providers.user_cache_dir()/auto``), keyed by the host (CPU model, ISA flags,
onnxruntime and OpenVINO versions), the model (weights sha256 and spec hash) and the
request (provider, threads), so the next run reads it instead of measuring again.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from simx.run import providers
from simx.run.build import build_session, check_available, read_spec
from simx.core.errors import ProviderError, SimxError, first_line
from simx.core.version import package_version

# Min cosine per image against the file's fp32 output on the CPU provider. fp32 paths on
# other kernels differ in rounding only; bf16 / fp16 keep 0.9999+ on ViTs (issue 9).
GATES = {"fp32": 0.9999, "bf16": 0.999, "fp16": 0.999, "int8": 0.99}
CALIB_BATCH = 4
CALIB_SECONDS = 1.0  # timed seconds per candidate at most, after one warm-up batch
CALIB_MIN_CALLS = 1
SCHEMA = "simx.auto/1"


def host_key() -> dict[str, Any]:
    """What makes a decision valid on this machine (and stale on another)."""
    from simx.core.machine import cpu_model

    import onnxruntime as ort

    return {"cpu_model": cpu_model(), "flags": providers.fast_units(),
            "all_flags_sha": hashlib.sha256(" ".join(sorted(providers.cpu_flags())).encode()).hexdigest()[:16],
            "onnxruntime": ort.__version__, "openvino": package_version("openvino"),
            "onnxruntime_ep_openvino": package_version("onnxruntime-ep-openvino")}


def cache_path(key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return providers.user_cache_dir() / "auto" / f"{digest}.json"


def candidates(provider: str, file_precision: str) -> tuple[list[tuple[str, str]], list[str]]:
    """(provider, precision) paths worth timing here, and one line per path left out and why."""
    names = list(providers.PROVIDERS) if provider == "auto" else [providers.get(provider).name]
    paths: list[tuple[str, str]] = []
    skipped: list[str] = []
    for name in names:
        try:
            row = check_available(name)
        except ProviderError as e:
            skipped.append(f"{name}: {e}")
            continue
        if file_precision != "fp32":  # fp16 / int8 files run at their own precision
            precs: tuple[str, ...] = (file_precision,)
        else:
            precs = row.precisions
        for prec in precs:
            if prec == "bf16" and not providers.host_bf16():
                skipped.append(f"{name} bf16: this CPU has no bf16 units")
                continue
            paths.append((row.name, prec))
    return paths, skipped


SIBLING_PRECISIONS = ("int8", "fp16")
#: Spec fields a sibling must share with the fp32 file: the same model, weights and input.
SAME_MODEL = ("id", "source", "weights", "image_size", "dim", "normalize", "preprocess")


def siblings(path: Path, spec: Any) -> tuple[list[tuple[Path, Any]], list[str]]:
    """The other-precision exports of an fp32 file found beside it, and one line per file
    left out and why (another model under the same name, an unreadable file)."""
    if spec.precision != "fp32":
        return [], []
    found: list[tuple[Path, Any]] = []
    skipped: list[str] = []
    mine = spec.to_dict()
    for prec in SIBLING_PRECISIONS:
        other = path.with_name(f"{path.stem}-{prec}.onnx")
        if not other.is_file():
            continue
        try:
            o = read_spec(other)
        except SimxError as e:
            skipped.append(f"{other.name}: {first_line(e)}")
            continue
        theirs = o.to_dict()
        differ = [k for k in SAME_MODEL if theirs.get(k) != mine.get(k)]
        if o.precision != prec or differ:
            skipped.append(f"{other.name}: not the {prec} export of {path.name} "
                           f"(differs in {', '.join(differ) or 'precision'})")
            continue
        found.append((other, o))
    return found, skipped


def calibration_pixels(spec: Any, n: int = CALIB_BATCH, seed: int = 0) -> np.ndarray:
    """A fixed batch of pseudo-random images, normalized as the model's preprocessing does:
    the same input on every host, no files needed."""
    s = spec.preprocess.crop
    rng = np.random.default_rng(seed)
    rgb = rng.random((n, 3, s, s), dtype=np.float32)
    mean = np.asarray(spec.preprocess.mean, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(spec.preprocess.std, np.float32).reshape(1, 3, 1, 1)
    return (rgb - mean) / std


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    num = (a * b).sum(1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.min(num / np.maximum(den, 1e-12)))


def _time_path(ms: Any, x: np.ndarray, seconds: float) -> tuple[float, np.ndarray]:
    out = ms.run(x)  # warm-up: first-call allocation and kernel selection
    calls, t0 = 0, time.perf_counter()
    while calls < CALIB_MIN_CALLS or (time.perf_counter() - t0 < seconds and calls < 8):
        ms.run(x)
        calls += 1
    return len(x) * calls / (time.perf_counter() - t0), out


def calibrate(path: Path, provider: str = "auto", threads: int | None = None,
              seconds: float = CALIB_SECONDS, kind: str = "image") -> dict[str, Any]:
    """Time and gate every candidate path of the file and of its siblings; return the
    decision (not cached here). The reference is the file on the CPU provider."""
    spec = read_spec(path)
    paths, skipped = candidates(provider, spec.precision)
    x = calibration_pixels(spec)
    if ("cpu", spec.precision) in paths:  # the reference path first: its output is the reference
        paths.remove(("cpu", spec.precision))
        paths.insert(0, ("cpu", spec.precision))
    runs = [(path, spec.precision, name, prec) for name, prec in paths]
    found, left_out = siblings(path, spec)
    skipped += left_out
    for other, o in found:
        more, why = candidates(provider, o.precision)
        runs += [(other, o.precision, name, prec) for name, prec in more]
        skipped += [f"{other.name} {w}" for w in why if w not in skipped]
    ref = None if runs and runs[0][2:] == ("cpu", spec.precision) else \
        build_session(path, "cpu", threads, kind=kind).run(x)
    gate = GATES.get(spec.precision, 0.999)
    measured: list[dict[str, Any]] = []
    for file, file_prec, name, prec in runs:
        row: dict[str, Any] = {"provider": name, "precision": prec}
        if file != path:
            row["file"] = file.name  # beside the file: the decision survives a moved folder
        try:
            # int8 / fp16 files run at their own precision (None: the file's own)
            ms = build_session(file, name, threads, kind=kind,
                            precision=prec if file_prec == "fp32" else None)
            img_s, out = _time_path(ms, x, seconds)
            if ref is None:
                ref = out
            need = GATES[prec] if spec.precision == "fp32" else gate
            row |= {"img_s": round(img_s, 2), "min_cosine": min_cosine(out, ref), "gate": need,
                    "ran": ms.precision}
            row["passed"] = row["min_cosine"] >= need
        except SimxError as e:
            row |= {"passed": False, "error": first_line(e)}
        measured.append(row)
    ok = [r for r in measured if r["passed"]]
    if not ok:
        raise ProviderError("precision auto: no path passed the accuracy gate: " +
                            "; ".join(f"{_label(r)}: "
                                      f"{r.get('error') or 'min cosine {:.5f}'.format(r['min_cosine'])}"
                                      for r in measured))
    best = max(ok, key=lambda r: r["img_s"])
    c = {"schema": SCHEMA, "provider": best["provider"], "precision": best["precision"],
         "measured": measured, "skipped": skipped, "batch": len(x), "threads": threads}
    if "file" in best:
        c["file"] = best["file"]
    return c


def _label(r: dict[str, Any]) -> str:
    """``provider precision``, plus the sibling file's name when the path runs one."""
    return f"{r['provider']} {r['precision']}" + (f" ({r['file']})" if "file" in r else "")


def describe(c: dict[str, Any]) -> tuple[str, str | None]:
    """The one line saying what was chosen and why, and the CPU-fallback warning (or None)."""
    best = next(r for r in c["measured"] if r["provider"] == c["provider"]
                and r["precision"] == c["precision"] and r.get("file") == c.get("file"))
    others = ", ".join(
        f"{_label(r)} " + (f"{r['img_s']:.1f} img/s" + ("" if r["passed"] else " (failed the gate)")
                           if "img_s" in r else "did not run")
        for r in c["measured"] if r is not best)
    where = f"cached {c['cache_file']}" if c.get("source") == "cache" else "measured now"
    line = (f"auto chose {_label(best)}: {best['img_s']:.1f} img/s at batch "
            f"{c['batch']}, min cosine {best['min_cosine']:.5f} vs the "
            + ("fp32 " if "file" in best else "") + "file on the CPU provider"
            + (f"; others: {others}" if others else "") + f" [{where}]")
    warning = None
    if c["provider"] == "cpu" and (c["skipped"] or len(c["measured"]) > 1):
        absent = sorted({s.split(":", 1)[0] for s in c["skipped"]})
        why = (f"not usable here: {', '.join(absent)} (details in {c['cache_file']}); " if absent else "")
        warning = (f"auto fell back to the CPU provider ({c['precision']}): {why}"
                   "no other path measured faster and accurate")
    return line, warning


def choose(path: str | os.PathLike[str], provider: str = "auto", threads: int | None = None,
           kind: str = "image") -> dict[str, Any]:
    """The cached decision for this host, model and request, or a fresh calibration
    (then cached). The result carries ``line`` and ``warning`` for the CLI to print."""
    path = Path(path)
    spec = read_spec(path)
    key = {"host": host_key(), "model": {"weights_sha256": spec.weights_sha256,
                                         "spec_hash": spec.embedding_hash(),
                                         "precision": spec.precision},
           "request": {"provider": provider, "threads": threads},
           # a sibling exported (or re-exported) since the decision: measure again
           "siblings": [{"file": p.name, "weights_sha256": o.weights_sha256,
                         "spec_hash": o.embedding_hash()} for p, o in siblings(path, spec)[0]]}
    file = cache_path(key)
    c: dict[str, Any] | None = None
    try:
        c = json.loads(file.read_text(encoding="utf-8"))
        if c.get("schema") != SCHEMA or c.get("key") != key:
            c = None
        else:
            check_available(c["provider"])  # a package removed since: measure again
            c["source"] = "cache"
    except (OSError, ValueError, KeyError, ProviderError):
        c = None
    if c is None:
        c = calibrate(path, provider=provider, threads=threads, kind=kind)
        c["key"] = key
        c["source"] = "measured"
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            tmp = file.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(c, indent=2) + "\n", encoding="utf-8")
            os.replace(tmp, file)
        except OSError:  # a read-only home: the choice still holds for this process
            pass
    c["cache_file"] = str(file)
    c["line"], c["warning"] = describe(c)
    return c
