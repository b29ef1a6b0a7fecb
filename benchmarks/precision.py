#!/usr/bin/env python3
"""fp32 vs fused fp32 vs int8 (vs fp16 on the CPU, for information), in ONE process.

For each model (random weights, LayerScale 1.0: speed does not depend on the values,
accuracy on random weights is only indicative; export gates the real weights):

* **fp32**: the plain dynamo export, as ``simx.export.to_onnx`` writes it before fusions;
* **fused**: ``simx.export.optimize.fuse_for_ort`` of it (what the fp32 file holds:
  MultiHeadAttention + BiasGelu, layer norms left as LayerNormalization);
* **fused_sln**: the same with ``skip_layer_norm=True`` (SkipLayerNormalization too, the
  CUDA-oriented graph), to show what that fusion costs on the CPU;
* **int8**: ``simx.export.quantize.to_int8`` of the fused graph;
* **fp16**: ``simx.export.quantize.to_fp16`` of fused_sln, run on the CPU provider (x86
  has no fp16 GEMM in onnxruntime: this is the accuracy gate's path, not a speed option).

img/s at batch 1 and 8 on real photos (skimage), all variants timed round-robin so that
other processes' load hits them alike: best (min-time) and median of the rounds, with
all cores, plus single-thread process CPU time (robust to contention on a shared
machine). Cosine and max relative error of each variant against fp32 onnxruntime.
An onnxruntime profile of fused fp32 and int8 at batch 8 gives per-op-type time shares:
what bounds each.

Writes ``benchmarks/results/precision.md`` and ``.json`` with the machine facts (CPU
model, int8-relevant ISA flags, cores, load average before and after).
Usage: ``python3 benchmarks/precision.py [--rounds 5] [--models dinov2-small,...]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from simx.model import catalogue
from simx.core import machine as sysinfo

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODELS = ("dinov2-small", "openclip-vit-b-32-laion2b_s34b_b79k")
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field",
          "immunohistochemistry", "colorwheel", "stereo_motorcycle")
#: CPU flags that decide int8 (and fp16/bf16) GEMM speed in onnxruntime's MLAS.
ISA_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
             "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_int8", "amx_bf16", "amx_tile")
INT8_GEMM_OPS = ("DynamicQuantizeMatMul", "MatMulIntegerToFloat", "MatMulInteger",
                 "DynamicQuantizeLinear", "QLinearMatMul")
VARIANTS = ("fp32", "fused", "fused_sln", "int8", "fp16")


def isa_flags() -> list[str]:
    """The int8-relevant flags this CPU reports (Linux /proc/cpuinfo)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return [f for f in ISA_FLAGS if f in flags]


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def photos_batch(entry: catalogue.ModelEntry) -> np.ndarray:
    """The 8 photos squashed to 224 and normalised (graph-to-graph comparisons only)."""
    import skimage.data
    from PIL import Image

    mean, std = np.array(entry.mean, np.float32), np.array(entry.std, np.float32)
    xs = []
    for name in PHOTOS:
        a = getattr(skimage.data, name)()
        a = a[0] if isinstance(a, tuple) else a
        im = Image.fromarray(a).convert("RGB").resize((224, 224), Image.BICUBIC)
        xs.append(((np.asarray(im, np.float32) / 255 - mean) / std).transpose(2, 0, 1))
    return np.ascontiguousarray(np.stack(xs))


def build_variants(model_id: str, log: Any) -> tuple[dict[str, onnx.ModelProto], dict[str, Any]]:
    from simx.export import families, optimize, quantize, to_onnx

    entry = catalogue.get(model_id)
    built = families.build(entry, "random", 224)
    t = time.perf_counter()
    plain = to_onnx.export_onnx(built.module, 224, 18, what=model_id)
    del built
    info: dict[str, Any] = {"export_s": round(time.perf_counter() - t, 1)}
    t = time.perf_counter()
    fused, counts = optimize.fuse_for_ort(plain)
    info["fuse_s"] = round(time.perf_counter() - t, 1)
    info["fused_ops"] = counts
    fused_sln, info["fused_sln_ops"] = optimize.fuse_for_ort(plain, skip_layer_norm=True)
    t = time.perf_counter()
    int8 = quantize.to_int8(fused)
    info["int8_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    fp16 = quantize.to_fp16(fused_sln)
    info["fp16_s"] = round(time.perf_counter() - t, 1)
    log(f"{model_id}: built variants {info}")
    return {"fp32": plain, "fused": fused, "fused_sln": fused_sln, "int8": int8, "fp16": fp16}, info


def session(model: onnx.ModelProto, threads: int, profile: str | None = None) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if profile:
        so.enable_profiling = True
        so.profile_file_prefix = profile
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def run(s: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def accuracy(out: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    a, b = out.astype(np.float64), ref.astype(np.float64)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    return {"min_cosine": float(cos.min()),
            "max_abs_rel": float(np.abs(a - b).max() / np.abs(b).max())}


def round_robin(sessions: dict[str, ort.InferenceSession], x: np.ndarray,
                rounds: int) -> dict[str, dict[str, float]]:
    """Each round runs every variant once; per variant: best and median wall, best CPU."""
    for s in sessions.values():
        run(s, x)
    wall: dict[str, list[float]] = defaultdict(list)
    cpu: dict[str, list[float]] = defaultdict(list)
    for _ in range(rounds):
        for k, s in sessions.items():
            c, t = time.process_time(), time.perf_counter()
            run(s, x)
            wall[k].append(time.perf_counter() - t)
            cpu[k].append(time.process_time() - c)
    n = len(x)
    return {k: {"img_s_best": n / min(wall[k]), "img_s_median": n / statistics.median(wall[k]),
                "img_s_cpu": n / min(cpu[k])} for k in sessions}


def op_profile(model: onnx.ModelProto, x: np.ndarray, threads: int, runs: int = 3) -> dict[str, float]:
    """Share of node time per op type (onnxruntime's profiler, ``runs`` runs after warm-up)."""
    with tempfile.TemporaryDirectory(prefix="simx-prof.") as tmp:
        s = session(model, threads, profile=os.path.join(tmp, "p"))
        run(s, x)
        for _ in range(runs):
            run(s, x)
        path = s.end_profiling()
        events = json.loads(Path(path).read_text())
    per: dict[str, float] = defaultdict(float)
    # Skip the warm-up run: its events come first; keep the last `runs` model_run spans.
    runs_spans = [e for e in events if e.get("name") == "model_run"]
    start = runs_spans[-runs]["ts"] if len(runs_spans) >= runs else 0
    for e in events:
        if e.get("cat") == "Node" and e.get("ts", 0) >= start and e["name"].endswith("_kernel_time"):
            per[e["args"].get("op_name", "?")] += e["dur"]
    total = sum(per.values()) or 1.0
    return {k: round(v / total, 4) for k, v in sorted(per.items(), key=lambda kv: -kv[1])}


def bench_model(model_id: str, rounds: int, log: Any) -> dict[str, Any]:
    models, info = build_variants(model_id, log)
    x8 = photos_batch(catalogue.get(model_id))
    cores = os.cpu_count() or 1
    ref = run(session(models["fp32"], cores), x8)
    acc = {k: accuracy(run(session(m, cores), x8), ref) for k, m in models.items()}
    log(f"{model_id}: accuracy {acc}")
    speed: dict[str, Any] = {}
    for threads in (cores, 1) if cores > 1 else (1,):
        sessions = {k: session(m, threads) for k, m in models.items()}
        for bs in (1, 8):
            x = x8[:bs]
            r = round_robin(sessions, x, rounds if bs == 8 else 3 * rounds)
            speed[f"t{threads}_b{bs}"] = r
            log(f"{model_id}: threads {threads} batch {bs}: "
                + ", ".join(f"{k} {v['img_s_best']:.2f}" for k, v in r.items()))
    prof = {k: op_profile(models[k], x8, cores) for k in ("fused", "int8")}
    return {"model": model_id, "build": info, "accuracy_vs_fp32": acc, "speed": speed,
            "profile_b8_share": prof}


def render(result: dict[str, Any]) -> str:
    m = result["machine"]
    cores = m["logical_cores"]
    lines = [
        "# Precision and fusion: fp32 vs fused vs int8 (vs fp16 on the CPU)",
        "",
        f"Measured {m['timestamp']} with `python3 benchmarks/precision.py`; random weights "
        "(LayerScale 1.0); inputs are 8 real photos (skimage). onnxruntime "
        f"{m['onnxruntime']}, CPU provider, graph optimisation ALL.",
        "",
        f"Machine: {m['cpu_model']}, {cores} cores, ISA flags {', '.join(result['isa_flags'])}.",
        f"Load: before `{result['uptime_before']}`; after `{result['uptime_after']}`. "
        "The machine is shared with other jobs: every variant is timed round-robin in "
        "the same rounds, so ratios are fairer than absolute figures. *best* is the "
        "fastest round, *median* the median round, *cpu* is single-thread throughput "
        "from process CPU time (least sensitive to other jobs). When another job holds a "
        "core, 2-thread figures can fall below 1-thread ones: read the 1-thread rows and "
        "the CPU-time line for ratios.",
        "",
    ]
    for r in result["models"]:
        lines += [f"## {r['model']}", "",
                  "Fused ops: " + ", ".join(f"{k} {v}" for k, v in r["build"]["fused_ops"].items())
                  + "; with skip_layer_norm: " + ", ".join(
                      f"{k} {v}" for k, v in r["build"]["fused_sln_ops"].items()),
                  "", "| variant | min cosine vs fp32 | max abs / max ref |",
                  "|---|---|---|"]
        for k in VARIANTS:
            a = r["accuracy_vs_fp32"][k]
            lines.append(f"| {k} | {a['min_cosine']:.6f} | {a['max_abs_rel']:.2e} |")
        lines += ["", "| threads, batch | " + " | ".join(
            f"{k} img/s best / median" for k in VARIANTS) + " | int8 / fp32 (best, median) | fused, fused_sln / fp32 (best) |",
            "|---" * (len(VARIANTS) + 3) + "|"]
        for key, s in r["speed"].items():
            t, b = key[1:].split("_b")
            cells = [f"{s[k]['img_s_best']:.2f} / {s[k]['img_s_median']:.2f}" for k in VARIANTS]
            ratio = (f"{s['int8']['img_s_best'] / s['fp32']['img_s_best']:.2f}x, "
                     f"{s['int8']['img_s_median'] / s['fp32']['img_s_median']:.2f}x")
            fused = ", ".join(f"{s[k]['img_s_best'] / s['fp32']['img_s_best']:.2f}x"
                              for k in ("fused", "fused_sln"))
            lines.append(f"| {t}, {b} | " + " | ".join(cells) + f" | {ratio} | {fused} |")
        s1 = r["speed"].get("t1_b8")
        if s1:
            lines += ["", "Single thread, batch 8, from CPU time: " + ", ".join(
                f"{k} {s1[k]['img_s_cpu']:.2f} img/s" for k in VARIANTS)
                + "; ratios to fp32: " + ", ".join(
                    f"{k} {s1[k]['img_s_cpu'] / s1['fp32']['img_s_cpu']:.2f}x" for k in VARIANTS[1:]) + "."]
        pf_all, pi_all = r["profile_b8_share"]["fused"], r["profile_b8_share"]["int8"]
        gemm_fp32 = sum(v for k, v in pf_all.items() if k in ("MatMul", "Gemm", "FusedMatMul"))
        gemm_int8 = sum(v for k, v in pi_all.items() if k in INT8_GEMM_OPS)
        lines += ["", f"What bounds int8: weight GEMMs are {gemm_fp32:.0%} of fused fp32 node time; "
                  f"in int8 they drop to {gemm_int8:.0%} of its time and the float ops left "
                  f"(attention, layer norm, GELU, reshapes) take {1 - gemm_int8:.0%}. Even free "
                  f"GEMMs would cap int8 at {1 / max(1e-9, 1 - gemm_fp32):.1f}x over fused fp32."]
        lines += ["", f"Per-op-type share of node time, batch 8, {cores} threads (top 8):", "",
                  "| fused fp32 | int8 |", "|---|---|"]
        pf, pi = (list(r["profile_b8_share"][k].items())[:8] for k in ("fused", "int8"))
        for i in range(max(len(pf), len(pi))):
            a = f"{pf[i][0]} {pf[i][1]:.1%}" if i < len(pf) else ""
            b = f"{pi[i][0]} {pi[i][1]:.1%}" if i < len(pi) else ""
            lines.append(f"| {a} | {b} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="rounds at batch 8 (x3 at batch 1)")
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "precision")
    args = ap.parse_args()

    def log(msg: str) -> None:
        print(msg, flush=True)

    result: dict[str, Any] = {"uptime_before": uptime(), "isa_flags": isa_flags()}
    result["models"] = [bench_model(m, args.rounds, log) for m in args.models.split(",")]
    result["uptime_after"] = uptime()
    result["machine"] = sysinfo.machine_facts()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(render(result))
    log(render(result))


if __name__ == "__main__":
    main()
