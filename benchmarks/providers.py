#!/usr/bin/env python3
"""simx's provider/precision paths side by side, in ONE process, on one exported file.

For DINOv2-S (random weights: speed does not depend on their values) at batch 8 and
``--threads`` threads: onnxruntime's CPU provider at fp32 (today's default), OpenVINO at
f32 and at bf16 (through the onnxruntime plugin where it offers a device for this CPU,
else through OpenVINO's own runtime), each also against a one-MatMul reference GEMM in
its own precision through its own provider. Rounds alternate the paths, so load that
drifts during the run hits each of them. Cosine: min over bundled photos (scikit-image)
against the CPU provider's fp32 output on the same tensors.

Writes ``benchmarks/results/providers_<cpu>-<cores>c.md`` and ``.json``.
Usage: ``python3 benchmarks/providers.py [--rounds 5] [--model PATH]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from simx.run import autoselect as autoselect
from simx.run import providers
from simx.model import catalogue
from simx.core import machine as sysinfo
from simx.core.errors import ProviderError
from simx.bench import gemm_gflops
from simx.run.session import check_available, open_model

ROOT = Path(__file__).resolve().parent.parent


def photo_batch(spec: Any, n: int) -> np.ndarray:
    """``n`` bundled photos (repeated if needed), preprocessed exactly as simx does."""
    from skimage import data

    from simx.images.preprocess import preprocess

    names = ("astronaut", "chelsea", "coffee", "rocket", "stereo_motorcycle", "hubble_deep_field",
             "immunohistochemistry", "colorwheel")
    raw = [getattr(data, k)() for k in names]
    imgs = [np.ascontiguousarray((a[0] if isinstance(a, tuple) else a)[..., :3]) for a in raw]
    return np.stack([preprocess(imgs[i % len(imgs)], spec.preprocess) for i in range(n)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="an exported .onnx (default: export DINOv2-S)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=2, help="timed batches per path per round")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()

    facts = sysinfo.machine_facts()
    facts["isa_fast_units"] = providers.fast_units()
    facts["cpu_flags"] = sorted(providers.cpu_flags())
    tmp = tempfile.TemporaryDirectory()
    if args.model:
        model = Path(args.model)
    else:
        from simx.export.api import export_model

        model = export_model(catalogue.get("dinov2-small"), weights="random", output_dir=Path(tmp.name))
    ov_row = "openvino"
    try:
        check_available("openvino")
        plugin_note = "onnxruntime's OpenVINO plugin"
    except ProviderError as e:
        plugin_note = f"OpenVINO's own runtime; the onnxruntime plugin: {e}"
        ov_row = "openvino-runtime"
    paths = [("cpu", "fp32"), (ov_row, "fp32")]
    if providers.host_bf16():
        paths.append((ov_row, "bf16"))
    sessions = {p: open_model(model, p[0], args.threads, precision=p[1]) for p in paths}
    spec = sessions[("cpu", "fp32")].spec
    x = photo_batch(spec, args.batch)
    ref = sessions[("cpu", "fp32")].run(x)
    seconds = {p: 0.0 for p in paths}
    calls = {p: 0 for p in paths}
    gemm: dict[tuple[str, str], list[float]] = {p: [] for p in paths}
    outs = {p: ms.run(x) for p, ms in sessions.items()}  # warm-up, and the cosine
    for _ in range(args.rounds):
        for p, ms in sessions.items():
            g = gemm_gflops(p[0], p[1], threads=args.threads, n=1024, repeats=3)
            if g["gflops"]:
                gemm[p].append(g["gflops"])
            t0 = time.perf_counter()
            for _ in range(args.calls):
                ms.run(x)
            seconds[p] += time.perf_counter() - t0
            calls[p] += args.calls
    from simx.bench import model_gflops

    gfl, _src, _g = model_gflops(model, spec)
    rows = []
    base = None
    for p, ms in sessions.items():
        img_s = args.batch * calls[p] / seconds[p]
        base = base or img_s
        gg = float(np.median(gemm[p])) if gemm[p] else None
        rows.append({"provider": p[0], "precision_asked": p[1], "precision_ran": ms.precision,
                     "img_s": img_s, "x_cpu_fp32": img_s / base,
                     "min_cosine_vs_cpu_fp32": autoselect.min_cosine(outs[p], ref),
                     "model_gflops_s": img_s * gfl if gfl else None, "ref_gemm_gflops": gg,
                     "efficiency_same_precision": (img_s * gfl / gg) if (gfl and gg) else None})
    slug = sysinfo.cpu_model().lower().replace(" ", "-")
    slug = "".join(c for c in slug if c.isalnum() or c == "-").strip("-")
    name = f"providers_{slug}-{sysinfo.usable_cores()}c"
    doc = {"machine": facts, "model": spec.id, "weights": spec.weights, "batch": args.batch,
           "threads": args.threads, "rounds": args.rounds, "openvino_path": plugin_note,
           "gflops_per_image": gfl, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(doc, indent=2) + "\n")
    lines = [
        f"# simx provider paths: {spec.id} ({spec.weights} weights), batch {args.batch}, "
        f"{args.threads} threads",
        "",
        f"Machine: {facts['cpu_model']}, {facts['usable_cores']} usable cores, fast units "
        f"{', '.join(facts['isa_fast_units'])}; onnxruntime {facts['onnxruntime']}, "
        f"load average {facts['load_average_1_5_15']} at the start (other jobs shared the host; "
        "ratios come from one run with alternated rounds).",
        f"OpenVINO path: {plugin_note}.",
        "",
        "| path | precision ran | img/s | × CPU EP fp32 | min cosine vs CPU EP fp32 (photos) "
        "| model GFLOP/s | same-precision GEMM GFLOP/s | efficiency |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        eff = r["efficiency_same_precision"]
        lines.append(
            f"| {r['provider']} {r['precision_asked']} | {r['precision_ran']} | {r['img_s']:.2f} | "
            f"{r['x_cpu_fp32']:.2f} | {r['min_cosine_vs_cpu_fp32']:.6f} | "
            f"{(r['model_gflops_s'] or 0):.0f} | {(r['ref_gemm_gflops'] or 0):.0f} | "
            f"{'n/a' if eff is None else f'{100 * eff:.0f}%'} |")
    lines += ["", f"Produced by `python3 benchmarks/providers.py --rounds {args.rounds}`; "
              f"raw figures in `{name}.json`.", ""]
    (args.out / f"{name}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
