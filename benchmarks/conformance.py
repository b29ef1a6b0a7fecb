"""Conformance sweep: every catalogue entry (open_clip's 196 pairs, timm's DINOv2/DINOv3
names) exported with random weights at its own input size, through ``export_model`` (the
path ``simx export`` takes), with the parity gate's figures or the failure and its cause.

Why it is built this way (2 cores, well under an hour):
- Pairs that share one graph (same family, architecture, quick_gelu and input size; the
  tag only changes preprocessing) are exported once; the other rows say which export they
  share and get a cheap per-pair check that the catalogue's preprocessing equals the one
  open_clip builds for that tag.
- Towers above ``--reduce-above`` million parameters run at ``--depth`` blocks. Every
  row records its depth. The script proves the code path is unchanged: the reduced
  module has exactly the module classes of the full-depth one (built on the meta device,
  so no memory), only fewer blocks.
- Each export runs under a per-row alarm (``--timeout``), results are written to the
  json after every row, ``--resume`` skips rows already there, ``--only REGEX`` picks ids.

Run: ``nice -n 10 python benchmarks/conformance.py [--only REGEX] [--resume]``.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import platform
import re
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).parent / "results"
DEFAULT_JSON = RESULTS / "conformance_amd-epyc-2c.json"
BLOCK_CONTAINERS = ("blocks", "resblocks")


class RowTimeout(Exception):
    """A row ran past ``--timeout``: raised from the alarm handler inside the export."""


def machine() -> dict[str, Any]:
    """The CPU model and the ISA flags that matter for these figures, from /proc/cpuinfo."""
    model, flags = platform.processor(), set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and ":" in line:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and ":" in line:
                flags = set(line.split(":", 1)[1].split())
    import os

    keep = sorted(f for f in flags if f.startswith(("avx512", "amx")) or f in ("avx2", "fma"))
    return {"cpu": model, "cores": os.cpu_count(), "isa": keep}


def group_key(e: Any) -> str:
    """Entries with one key have one ONNX graph: the tag changes only preprocessing."""
    if e.family.startswith("openclip"):
        return f"{e.family}|{e.variant}|qg={int(e.quick_gelu)}|{e.default_size}"
    return e.id


def classify(exc: BaseException) -> str:
    """The cause of a failed row, from its exception class and message."""
    msg = f"{type(exc).__name__}: {exc}"
    low = msg.lower()
    if isinstance(exc, RowTimeout):
        return "timeout"
    if isinstance(exc, MemoryError) or "out of memory" in low:
        return "out of memory"
    if "huggingface.co" in low or "pip install transformers" in low:
        return "Hugging Face text config (hub unreachable)"
    if "collapsed" in low or "near-identical" in low:
        return "collapse (no random recipe)"
    if "differs from torch" in low:
        return "parity"
    if "not_implemented" in low or "could not find an implementation" in low:
        return "op onnxruntime lacks"
    if "unsupported" in low and ("onnx" in low or "op" in low):
        return "unsupported ONNX op"
    if "multiple of" in low or "non-square" in low or "image size" in low:
        return "input size"
    if "preprocessing" in low:
        return "preprocessing mismatch"
    if any(w in low for w in ("dynamo", "trace", "export", "guard", "fx", "symbolic")):
        return "tracing error"
    return "other"


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


@contextlib.contextmanager
def alarm(seconds: int) -> Iterator[None]:
    """Raise RowTimeout in this (main) thread after ``seconds``."""
    def fire(_sig: int, _frame: Any) -> None:
        raise RowTimeout(f"row ran past {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@contextlib.contextmanager
def reduced_depth(n: int | None) -> Iterator[None]:
    """Build towers with ``n`` transformer blocks: open_clip's vision ``layers`` (and a
    1-layer text tower, never exported) and timm's ``depth`` kwarg (``depths`` for
    ConvNeXt, ``layers`` for FastViT/MCi: ``n`` blocks per stage); ``None``: unchanged.

    Only the block count changes; ``module_classes`` lets the caller check that."""
    if n is None:
        yield
        return
    import open_clip.factory as factory
    import timm

    orig_cfg, orig_create = factory.get_model_config, timm.create_model

    def cfg(name: str) -> Any:
        c = orig_cfg(name)
        if c:
            vis, txt = c.get("vision_cfg", {}), c.get("text_cfg", {})
            if isinstance(vis.get("layers"), int):
                vis["layers"] = min(vis["layers"], n)
            if isinstance(txt.get("layers"), int):
                txt["layers"] = 1
        return c

    def create(name: str, *a: Any, **kw: Any) -> Any:
        if "depth" in kw:
            return orig_create(name, *a, **kw)
        try:
            return orig_create(name, *a, depth=n, **kw)
        except TypeError as e:  # a trunk without a `depth` argument (ConvNeXt: `depths`)
            if "depth" not in str(e):
                raise
            if name.startswith("convnext") and "depths" not in kw:  # 4 stages of blocks
                return orig_create(name, *a, depths=(n,) * 4, **kw)
            if name.startswith("fastvit") and "layers" not in kw:  # MobileCLIP's MCi: 4-5 stages
                import torch

                with torch.device("meta"):
                    stages = len(orig_create(name, pretrained=False).stages)
                return orig_create(name, *a, layers=(n,) * stages, **kw)
            return orig_create(name, *a, **kw)

    factory.get_model_config, timm.create_model = cfg, create
    try:
        yield
    finally:
        factory.get_model_config, timm.create_model = orig_cfg, orig_create


def module_classes(module: Any) -> set[str]:
    return {f"{type(m).__module__}.{type(m).__qualname__}" for m in module.modules()}


def n_blocks(module: Any) -> int:
    import torch.nn as nn

    return sum(len(m) for name, m in module.named_modules()
               if name.split(".")[-1] in BLOCK_CONTAINERS and isinstance(m, (nn.ModuleList, nn.Sequential)))


def full_depth_classes(entry: Any, size: int) -> tuple[set[str], int]:
    """Module classes and block count of the full-depth tower, built on the meta device."""
    import torch

    from simx.export.families import family

    orig_to = torch.nn.Module.to
    torch.nn.Module.to = lambda self, *a, **k: self  # type: ignore[method-assign]  # meta stays meta
    try:
        with torch.device("meta"):
            built = family(entry.family).build(entry, "random", size)
    finally:
        torch.nn.Module.to = orig_to  # type: ignore[method-assign]
    return module_classes(built.module), n_blocks(built.module)


def preprocess_check(entry: Any) -> str:
    """Does the catalogue's preprocessing equal what open_clip builds for this tag?"""
    if not entry.family.startswith("openclip"):
        return "n/a"
    from simx.export.families._openclip import openclip_preprocess, preprocess_from_openclip

    ours = entry.preprocess(entry.default_size)
    theirs = preprocess_from_openclip(openclip_preprocess(entry.variant, entry.pretrained,
                                                          entry.default_size))
    return "equal" if ours == theirs else f"DIFFERS: ours {ours}, open_clip {theirs}"


def export_row(entry: Any, depth: int | None, timeout: int) -> dict[str, Any]:
    """Export one representative; the gate's figures, or the failure and its cause."""
    from simx.export import api, families, verify, weights

    size = entry.default_size
    row: dict[str, Any] = {"id": entry.id, "family": entry.family, "size": size,
                           "params_m": entry.params_m, "depth": depth or "full"}
    captured: dict[str, Any] = {}
    orig_build, orig_ref = families.build, verify.torch_reference

    def build(*a: Any, **k: Any) -> Any:
        b = orig_build(*a, **k)
        captured["classes"], captured["blocks"] = module_classes(b.module), n_blocks(b.module)
        return b

    def torch_reference(module: Any, batches: Any) -> Any:
        refs = orig_ref(module, batches)
        photos = np.concatenate([r for p, r in zip(batches, refs) if p.kind == "photos"])
        x = photos.astype(np.float64)
        x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)
        sim = x @ x.T
        iu = np.triu_indices(len(x), 1)
        captured["median_pairwise_cosine"] = float(np.median(sim[iu]))
        return refs

    families.build, verify.torch_reference = build, torch_reference
    started = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="simx-conf-") as out, alarm(timeout), \
                reduced_depth(depth), weights.quiet_logging():
            path = Path(api.export_model(entry, weights="random", output_dir=Path(out),
                                         image_size=size))
            from simx.run.session import read_spec

            spec = read_spec(path)
            data = path.with_name(path.name + ".data")
            row["file_mb"] = round((path.stat().st_size + (data.stat().st_size if data.exists() else 0))
                                   / 2**20, 1)
        p = spec.parity
        row.update(exported=True, min_cosine=p["min_cosine"], max_abs=p["max_abs"],
                   photos_min_cosine=p["photos_min_cosine"], photos_max_abs=p["photos_max_abs"],
                   random_min_cosine=p["random_min_cosine"], random_max_abs=p["random_max_abs"],
                   max_pairwise_cosine=p["max_pairwise_cosine"])
    except Exception as e:  # noqa: BLE001  # every failure is a row, classified
        row.update(exported=False, error=type(e).__name__, reason=one_line(e), cause=classify(e))
        tb = traceback.extract_tb(e.__traceback__)
        row["where"] = f"{Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
    finally:
        families.build, verify.torch_reference = orig_build, orig_ref
    row["export_s"] = round(time.perf_counter() - started, 1)
    row["median_pairwise_cosine"] = captured.get("median_pairwise_cosine")
    row["blocks"] = captured.get("blocks")
    if depth is not None and "classes" in captured:
        try:
            full, full_blocks = full_depth_classes(entry, size)
            row["full_blocks"] = full_blocks
            same = full == captured["classes"]
            row["same_classes"] = same
            if not same:
                row["class_diff"] = sorted(full ^ captured["classes"])[:6]
        except Exception as e:  # noqa: BLE001
            row["same_classes"] = None
            row["class_check_error"] = one_line(e)
    gc.collect()
    return row


def sweep(only: str | None, resume: bool, out: Path, depth: int, reduce_above: float,
          timeout: int, family: str | None = None) -> dict[str, Any]:
    from simx.model import catalogue

    doc: dict[str, Any] = {"rows": {}}
    if resume and out.exists():
        doc = json.loads(out.read_text())
    doc["machine"] = machine()
    doc["settings"] = {"depth": depth, "reduce_above_m": reduce_above, "timeout_s": timeout}
    rows: dict[str, Any] = doc["rows"]
    entries = [e for e in catalogue.load_catalogue().values() if (not only or re.search(only, e.id)) and (not family or re.search(family, e.family))]
    groups: dict[str, list[Any]] = {}
    for e in entries:
        groups.setdefault(group_key(e), []).append(e)
    t0 = time.perf_counter()
    for i, (key, members) in enumerate(groups.items(), 1):
        rep = members[0]
        if resume and all(m.id in rows for m in members):
            continue
        d = depth if rep.params_m > reduce_above else None
        base = rows[rep.id] if resume and rep.id in rows else export_row(rep, d, timeout)
        base["group"] = key
        rows[rep.id] = base
        for m in members[1:]:
            shared = {k: v for k, v in base.items() if k not in ("id", "export_s", "file_mb")}
            try:
                pre = preprocess_check(m)
            except Exception as e:  # noqa: BLE001
                pre = f"error: {one_line(e)}"
            rows[m.id] = {**shared, "id": m.id, "shares": rep.id, "preprocess": pre}
        base["preprocess"] = preprocess_check(rep) if rep.family.startswith("openclip") else "n/a"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=1, sort_keys=True))
        status = "ok" if base["exported"] else f"FAIL {base['cause']}: {base['reason'][:90]}"
        print(f"[{i}/{len(groups)}] {rep.id} (+{len(members) - 1} sharing) depth={base['depth']} "
              f"{base['export_s']} s {status}  [{time.perf_counter() - t0:.0f} s]", flush=True)
    return doc


def _f(v: Any, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def table(doc: dict[str, Any]) -> str:
    """The markdown table: a summary, failures by cause, then one line per (model, tag)."""
    from simx.model import catalogue

    missing = [e for e in catalogue.load_catalogue().values() if e.id not in doc["rows"]]
    rows = sorted(doc["rows"].values(), key=lambda r: (r["family"], r["id"]))
    rows += [{"id": e.id, "family": e.family, "size": e.default_size, "params_m": e.params_m,
              "depth": "-", "exported": False, "cause": "not run", "error": "-",
              "reason": "the sweep did not reach this row"} for e in missing]
    ok = [r for r in rows if r["exported"]]
    causes: dict[str, int] = {}
    for r in rows:
        if not r["exported"]:
            causes[r["cause"]] = causes.get(r["cause"], 0) + 1
    m = doc["machine"]
    s = doc["settings"]
    reps = [r for r in rows if "shares" not in r]
    lines = [
        "# Conformance sweep: every catalogue entry, random weights, its own input size",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores; ISA: {' '.join(m['isa'])}.",
        f"Generated by `benchmarks/conformance.py`; {len(reps)} exports for {len(rows)} rows "
        "(rows with `shares` use that export's graph: same family, architecture, quick_gelu and "
        "size; their own check is `preprocess`, the catalogue's transform vs the one open_clip "
        "builds for the tag).",
        f"Towers over {s['reduce_above_m']}M parameters run at {s['depth']} blocks (`depth`); "
        "`classes` = the reduced tower has exactly the module classes of the full one "
        "(built on the meta device). Per-row timeout "
        f"{s['timeout_s']} s.",
        "",
        f"**Pass rate: {len(ok)}/{len(rows)} = {100 * len(ok) / max(len(rows), 1):.1f}%** "
        "exported with parity (gate: min cosine and max abs vs torch at batch 1 and 3, photos "
        "and random tensors; refused when distinct photos reach max pairwise cosine >= 0.98).",
        "",
        "Failures by cause: " + (", ".join(f"{k}: {v}" for k, v in sorted(causes.items())) or "none"),
        "",
        "| id | family | size | params M | depth | classes | exported | min cos | max abs | "
        "median pair cos | export s | MB | shares | preprocess | failure |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        fail = "" if r["exported"] else f"{r['cause']}: {r['error']}: {r['reason']}".replace("|", "/")
        cls = {True: "same", False: "DIFF", None: "-"}.get(r.get("same_classes"), "-")
        depth = r["depth"] if r["depth"] in ("full", "-") else f"{r.get('blocks')}/{r.get('full_blocks', '?')}"
        lines.append(
            f"| {r['id']} | {r['family']} | {r['size']} | {r['params_m']} | {depth} | {cls} | "
            f"{'yes' if r['exported'] else 'no'} | {_f(r.get('min_cosine'), '.6f')} | "
            f"{_f(r.get('max_abs'), '.2g')} | {_f(r.get('median_pairwise_cosine'), '.3f')} | "
            f"{_f(r.get('export_s'), '')} | {_f(r.get('file_mb'), '')} | {r.get('shares', '')} | "
            f"{r.get('preprocess', '')[:60]} | {fail} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", help="regex on catalogue ids")
    ap.add_argument("--family", help="regex on family names (openclip-timm, dinov3, ...)")
    ap.add_argument("--resume", action="store_true", help="keep rows already in the json")
    ap.add_argument("--out", type=Path, default=DEFAULT_JSON, help="results json (.md beside it)")
    ap.add_argument("--depth", type=int, default=2, help="blocks for towers over --reduce-above")
    ap.add_argument("--reduce-above", type=float, default=300.0, help="million parameters")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per export")
    ap.add_argument("--merge", type=Path, nargs="*", default=[],
                    help="also take the rows of these result files (a sweep split by --family)")
    ap.add_argument("--table-only", action="store_true", help="rewrite the .md from the json")
    a = ap.parse_args(argv)
    doc = json.loads(a.out.read_text()) if a.table_only else sweep(
        a.only, a.resume, a.out, a.depth, a.reduce_above, a.timeout, a.family)
    for extra in a.merge:
        doc["rows"].update(json.loads(extra.read_text())["rows"])
    if a.merge:
        a.out.write_text(json.dumps(doc, indent=1, sort_keys=True))
    a.out.with_suffix(".md").write_text(table(doc))
    from simx.model import catalogue

    n = len(catalogue.load_catalogue())
    ok = sum(r["exported"] for r in doc["rows"].values())
    print(f"pass rate {ok}/{n}; table {a.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
