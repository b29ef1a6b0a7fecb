#!/usr/bin/env python3
"""The GPU check's measurements (run by ``benchmarks/gpu_check.sh``; see there for why).

For each model (``--models``; simx's ``<id>.onnx`` in ``--models-dir``, exported here
beforehand with random weights) and each batch size:

* **torch peer** on the device: the torch module exactly as simx's exporter builds it,
  fp32 and fp16 autocast (``torch.autocast("cuda", torch.float16)``);
* **simx on onnxruntime**, where ``onnxruntime.get_available_providers()`` offers them:
  the CUDA provider in fp32 (the fp32 file) and fp16 (``<id>-fp16.onnx`` if present), and
  TensorRT fp16 (``trt_fp16_enable``, an engine cache, a dynamic-batch profile min/opt/max);
* **parity** of every path against onnxruntime CPU fp32 on the same photos (min cosine).

Every path not run is listed in ``skipped`` with the reason, and printed. ``--dry-run``
runs the same flow on the CPU (torch on the CPU, the CPU provider standing in for the
GPU one, small batches, short timings), so the script is tested where no GPU is lent.
Writes one JSON document to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def _cos_min(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


def _time(call: Callable[[], Any], seconds: float, sync: Callable[[], None]) -> list[float]:
    """Seconds per call after two warm-up calls, until ``seconds`` have passed (>= 3 calls)."""
    call(), call()
    sync()
    lat: list[float] = []
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(lat) < 3:
        t0 = time.perf_counter()
        call()
        sync()
        lat.append(time.perf_counter() - t0)
    return lat


def _row(lat: list[float], batch: int) -> dict[str, float]:
    a = np.asarray(lat)
    return {"img_s": batch * len(a) / a.sum(), "latency_ms_p50": float(np.median(a) * 1e3),
            "latency_ms_p90": float(np.percentile(a, 90) * 1e3), "calls": len(a)}


def photos_pixels(spec: Any, n: int) -> np.ndarray:
    """``n`` real photos (skimage, cycled) through simx's exact preprocessing."""
    from simx.images.preprocess import preprocess_batch

    import skimage.data

    names = ["astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry"]
    imgs = [np.ascontiguousarray(getattr(skimage.data, m)()[:, :, :3]) for m in names]
    return preprocess_batch([imgs[i % len(imgs)] for i in range(n)], spec.preprocess)


def ort_session(path: Path, providers: list[Any], threads: int = 0) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), so, providers=providers)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="dinov2-base,openclip-vit-b-32-laion2b_s34b_b79k")
    ap.add_argument("--models-dir", type=Path, default=Path("onnx_models"))
    ap.add_argument("--batch-sizes", default="1,32,256")
    ap.add_argument("--seconds", type=float, default=4.0, help="Timed seconds per path and batch.")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--dry-run", action="store_true", help="CPU stand-in run (no GPU needed).")
    ap.add_argument("--trt-cache", type=Path, default=Path("/tmp/simx-trt-cache"))
    args = ap.parse_args()

    import onnxruntime as ort
    import torch

    from simx.model import catalogue
    from simx.run.session import read_spec

    started = time.perf_counter()
    if args.dry_run:
        # One thread: the dry run checks the flow, and 2-thread OpenMP spinning on a
        # loaded shared CPU can make each call take seconds.
        torch.set_num_threads(1)
    available = list(ort.get_available_providers())
    cuda = torch.cuda.is_available() and not args.dry_run
    device = "cuda" if cuda else "cpu"
    batches = [int(b) for b in args.batch_sizes.split(",")]
    skipped: dict[str, str] = {}
    say = lambda s: print(f"gpu_check: {s}", flush=True)  # noqa: E731
    if args.dry_run:
        skipped["gpu"] = "dry run: torch and onnxruntime run on the CPU, as a stand-in"
    elif not cuda:
        skipped["gpu"] = "torch.cuda.is_available() is False"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    result: dict[str, Any] = {
        "schema": "simx-gpu-check/1", "dry_run": args.dry_run,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": {"python": platform.python_version(), "torch": torch.__version__,
                 "torch_cuda": torch.version.cuda, "onnxruntime": ort.__version__,
                 "onnxruntime_providers": available,
                 "gpu": torch.cuda.get_device_name(0) if cuda else None,
                 "cpu": platform.processor() or platform.machine()},
        "batch_sizes": batches, "models": [], "skipped": skipped,
    }
    for mid in args.models.split(","):
        entry = catalogue.get(mid)
        path = args.models_dir / f"{entry.id}.onnx"
        if not path.exists():
            skipped[mid] = f"{path} not found (export it beforehand: simx export ... --weights random)"
            continue
        spec = read_spec(path)
        x_all = photos_pixels(spec, max(batches))
        ref = ort_session(path, ["CPUExecutionProvider"], 1 if args.dry_run else 0).run(None, {spec.input_name: x_all[:4]})[0]
        m: dict[str, Any] = {"id": entry.id, "image_size": spec.image_size, "paths": {}}
        result["models"].append(m)

        # torch peer, built exactly as the exporter builds it
        from simx.export import families

        tmod = families.build(entry, "random", spec.image_size).module.eval().to(device)
        torch_paths = {"torch_fp32": None}
        torch_paths["torch_fp16_autocast" if cuda else "torch_bf16_autocast"] = (
            torch.float16 if cuda else torch.bfloat16)
        for name, dtype in torch_paths.items():
            rows = {}

            def call(x: torch.Tensor, dtype: Any = dtype, mod: Any = tmod) -> torch.Tensor:
                with torch.inference_mode():
                    if dtype is None:
                        return mod(x)
                    with torch.autocast(device, dtype):
                        return mod(x)

            out = call(torch.from_numpy(x_all[:4]).to(device)).float().cpu().numpy()
            for b in batches:
                xt = torch.from_numpy(x_all[:b]).to(device)
                rows[str(b)] = _row(_time(lambda: call(xt), args.seconds, sync), b)
            m["paths"][name] = {"batches": rows, "min_cosine_vs_cpu_fp32": _cos_min(out, ref)}
            say(f"{mid} {name}: " + ", ".join(f"b{b} {r['img_s']:.1f} img/s" for b, r in rows.items()))
        tmod = call = None  # free the torch weights before onnxruntime loads its copy
        if cuda:
            torch.cuda.empty_cache()

        # simx through onnxruntime's GPU providers
        ort_paths: dict[str, tuple[Path, list[Any]]] = {}
        fp16 = args.models_dir / f"{entry.id}-fp16.onnx"
        if args.dry_run:
            ort_paths["ort_cpu_fp32_standin"] = (path, ["CPUExecutionProvider"])
        if "CUDAExecutionProvider" in available and not args.dry_run:
            cuda_opts = {"device_id": 0, "cudnn_conv_algo_search": "EXHAUSTIVE"}
            ort_paths["simx_cuda_fp32"] = (path, [("CUDAExecutionProvider", cuda_opts)])
            if fp16.exists():
                ort_paths["simx_cuda_fp16"] = (fp16, [("CUDAExecutionProvider", cuda_opts)])
            else:
                skipped[f"{mid} simx_cuda_fp16"] = f"{fp16} not found (simx export ... --precision fp16)"
        elif not args.dry_run:
            skipped[f"{mid} simx_cuda"] = ("onnxruntime has no CUDAExecutionProvider here "
                                           f"(providers: {', '.join(available)}); onnxruntime-gpu absent")
        if "TensorrtExecutionProvider" in available and not args.dry_run:
            s = spec.image_size
            shape = lambda b: f"{spec.input_name}:{b}x3x{s}x{s}"  # noqa: E731
            trt = {"device_id": 0, "trt_fp16_enable": True, "trt_engine_cache_enable": True,
                   "trt_engine_cache_path": str(args.trt_cache),
                   "trt_profile_min_shapes": shape(1), "trt_profile_opt_shapes": shape(32),
                   "trt_profile_max_shapes": shape(max(batches))}
            ort_paths["simx_tensorrt_fp16"] = (path, [("TensorrtExecutionProvider", trt),
                                                      ("CUDAExecutionProvider", {"device_id": 0})])
        elif not args.dry_run:
            skipped[f"{mid} simx_tensorrt"] = "onnxruntime has no TensorrtExecutionProvider here"
        for name, (file, providers) in ort_paths.items():
            try:
                sess = ort_session(file, providers, 1 if args.dry_run else 0)
            except Exception as e:  # a provider that fails to start is a result, not a crash
                skipped[f"{mid} {name}"] = f"session failed: {str(e).splitlines()[0][:200]}"
                continue
            inp = sess.get_inputs()[0]
            dt = np.float16 if inp.type == "tensor(float16)" else np.float32
            out = np.asarray(sess.run(None, {inp.name: x_all[:4].astype(dt)})[0], np.float32)
            rows = {}
            for b in batches:
                xb = x_all[:b].astype(dt)
                rows[str(b)] = _row(_time(lambda: sess.run(None, {inp.name: xb}), args.seconds,
                                          lambda: None), b)
            m["paths"][name] = {"batches": rows, "providers": sess.get_providers(),
                                "min_cosine_vs_cpu_fp32": _cos_min(out, ref)}
            say(f"{mid} {name}: " + ", ".join(f"b{b} {r['img_s']:.1f} img/s" for b, r in rows.items()))
    result["seconds"] = round(time.perf_counter() - started, 1)
    for k, v in skipped.items():
        say(f"skipped {k}: {v}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    say(f"wrote {args.out} in {result['seconds']} s")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    main()
