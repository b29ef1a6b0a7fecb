#!/usr/bin/env python3
"""simx's paths beside the best peers, in ONE process, on the same models, tensors and files.

For each model (random weights: speed does not depend on their values), at one batch size
(default 8) and ``--threads`` threads (default: the usable cores), model-only:

* **torch fp32**: the torch module exactly as simx's exporter builds it, eager,
  ``torch.inference_mode``, ``torch.set_num_threads(threads)``. Every ratio is against it.
* **torch bf16**: the same under ``torch.autocast("cpu", torch.bfloat16)``, where the CPU
  has bf16 units (``avx512_bf16`` or ``amx_bf16`` in /proc/cpuinfo); else skipped, said so.
* **openvino**: OpenVINO's own runtime on simx's fp32 ``.onnx`` (``Core().compile_model(
  path, "CPU")``, default settings); the precision it chose is recorded.
* **simx fp32**: the fp32 file on onnxruntime's CPU provider (today's default).
* **simx int8 static**: the static QDQ int8 file (export's default int8), batched.
* **simx int8 dynamic**: the dynamic int8 file one image per call, as the Encoder runs it.
* **ort openvino-ep bf16**: onnxruntime with the OpenVINO execution-provider plugin
  (``onnxruntime-ep-openvino``) on the fp32 file, ``load_config`` INFERENCE_PRECISION_HINT
  bf16; skipped with the reason where the plugin offers no device.

Rounds alternate the paths (each round after its own numpy sgemm sample), so load that
drifts during the run hits every path. Accuracy: min cosine of each path against torch fp32
on the four verification photos. Then **end-to-end**: ``simx.Encoder.embed`` (decode +
exact preprocess + model, threaded decoding) on the JPEGs in ``samples/`` against the same
session's model-only rate, for simx's automatic choice (``--precision auto`` on the fp32
file, with its static int8 sibling beside it) and for the two CPU-provider files.

Writes ``benchmarks/results/compare_<cpu>-<cores>c.md`` and ``.json`` with the machine's
CPU model, ISA flags and load averages. Usage::

    python3 benchmarks/compare_torch.py --models-dir DIR [--seconds 12] [--rounds 3]

``--models-dir`` holds (or receives) ``<id>.onnx`` and ``<id>-int8.onnx`` (static), and
``DIR/dynamic/<id>-int8.onnx``; missing files are exported there with random weights.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from simx import bench
from simx.model import catalogue
from simx.core import machine as sysinfo
from simx.bench import reference
from simx.core.errors import SimxError, first_line

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODELS = ("dinov2-small", "dinov2-base", "openclip-vit-b-32-laion2b_s34b_b79k")
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
             "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile", "avx512_fp16")
ORDER = ("torch_fp32", "torch_bf16", "openvino", "ort_openvino_ep_bf16", "simx_fp32",
         "simx_int8_static", "simx_int8_dynamic_per_image", "simx_int8_openvino", "simx_auto")
#: What a user could pick instead of simx: the goal is simx auto against the fastest of these.
PEERS = ("torch_fp32", "torch_bf16", "openvino", "ort_openvino_ep_bf16")


def host_slug(facts: dict[str, Any]) -> str:
    """A file-name-safe machine label: CPU model and core count (hostnames are random here)."""
    cpu = re.sub(r"[^a-z0-9]+", "-", facts["cpu_model"].lower()).strip("-") or "cpu"
    return f"{cpu}-{facts['usable_cores']}c"


def isa_flags() -> list[str]:
    """The ISA flags that decide which fast paths exist, as /proc/cpuinfo lists them."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    m = re.search(r"^flags\s*:\s*(.*)$", text, re.M)
    have = set(m.group(1).split()) if m else set()
    return [f for f in ISA_FLAGS if f in have]


def _cos_min(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


def ensure_files(entry: catalogue.ModelEntry, models_dir: Path, log: Callable[[str], None]) -> dict[str, Path]:
    """fp32, static int8 and dynamic int8 files for ``entry`` (exported where missing)."""
    from simx.export.api import export_model

    want = {"fp32": (models_dir, "fp32", "static"), "static": (models_dir, "int8", "static"),
            "dynamic": (models_dir / "dynamic", "int8", "dynamic")}
    out = {}
    for key, (d, precision, int8) in want.items():
        suffix = "" if precision == "fp32" else "-int8"
        path = d / f"{entry.id}{suffix}.onnx"
        if not path.exists():
            log(f"exporting {path} (random weights) ...")
            path = Path(export_model(entry, weights="random", output_dir=d, precision=precision,
                                     int8=int8))
        out[key] = path
    return out


def openvino_ep_session(path: Path, threads: int) -> tuple[Any | None, str]:
    """onnxruntime + the OpenVINO EP plugin in bf16, or (None, why not)."""
    import onnxruntime as ort

    try:
        import onnxruntime_ep_openvino as ovep
    except ImportError:
        return None, "onnxruntime-ep-openvino is not installed"
    name = ovep.get_ep_name()
    try:
        ort.register_execution_provider_library(name, ovep.get_library_path())
    except Exception as e:  # already registered in this process is fine
        if "already" not in str(e).lower():
            return None, f"plugin did not register: {str(e).splitlines()[0]}"
    devices = [d for d in ort.get_ep_devices() if d.ep_name == name]
    if not devices:
        seen = sorted({d.ep_name for d in ort.get_ep_devices()})
        return None, (f"the plugin registered but offers no device on this CPU "
                      f"(onnxruntime lists devices only for {', '.join(seen)})")
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    cfg = {"CPU": {"INFERENCE_PRECISION_HINT": "bf16", "INFERENCE_NUM_THREADS": str(threads)}}
    so.add_provider_for_devices(devices, {"device_type": "CPU", "load_config": json.dumps(cfg)})
    return ort.InferenceSession(str(path), so), "bf16 (load_config INFERENCE_PRECISION_HINT)"


def build_paths(entry: catalogue.ModelEntry, files: dict[str, Path], x: np.ndarray, threads: int,
                flags: list[str]) -> tuple[dict[str, Callable[[np.ndarray], np.ndarray]], dict[str, str]]:
    """name -> batch runner (float32 [B,3,S,S] -> [B,D]) and name -> note (skips, precisions)."""
    import torch

    from simx.export import families
    from simx.run.session import open_model

    torch.set_num_threads(threads)
    tmod = families.build(entry, "random", entry.default_size).module.eval()
    notes: dict[str, str] = {}
    paths: dict[str, Callable[[np.ndarray], np.ndarray]] = {}

    def torch_fp32(b: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return tmod(torch.from_numpy(b)).float().numpy()

    paths["torch_fp32"] = torch_fp32
    if "avx512_bf16" in flags or "amx_bf16" in flags:
        def torch_bf16(b: np.ndarray) -> np.ndarray:
            with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16):
                return tmod(torch.from_numpy(b)).float().numpy()

        paths["torch_bf16"] = torch_bf16
    else:
        notes["torch_bf16"] = "skipped: no avx512_bf16 / amx_bf16 on this CPU"
    try:
        import openvino as ov

        core = ov.Core()
        compiled = core.compile_model(str(files["fp32"]), "CPU")
        notes["openvino"] = (f"openvino {ov.__version__}, default settings: inference precision "
                             f"{compiled.get_property('INFERENCE_PRECISION_HINT')}, "
                             f"{compiled.get_property('INFERENCE_NUM_THREADS')} threads")
        request = compiled.create_infer_request()
        paths["openvino"] = lambda b: np.asarray(request.infer({0: b})[0]).copy()
    except ImportError:
        notes["openvino"] = "skipped: openvino is not installed"
    fp32 = open_model(files["fp32"], provider="cpu", threads=threads)
    static = open_model(files["static"], provider="cpu", threads=threads)
    dynamic = open_model(files["dynamic"], provider="cpu", threads=threads)
    paths["simx_fp32"] = fp32.run
    paths["simx_int8_static"] = static.run
    paths["simx_int8_dynamic_per_image"] = lambda b: np.concatenate(
        [dynamic.run(b[i:i + 1]) for i in range(len(b))])
    try:
        ov8 = open_model(files["static"], provider="openvino-runtime", threads=threads)
        paths["simx_int8_openvino"] = ov8.run
        notes["simx_int8_openvino"] = f"ran at {ov8.precision}"
    except SimxError as e:
        notes["simx_int8_openvino"] = f"skipped: {first_line(e)}"
    # What `--precision auto` picks on the fp32 file, its int8 sibling beside it, measured
    # now (main() points the decision cache at a fresh folder, so nothing stale is read).
    auto = open_model(files["fp32"], provider="auto", threads=threads, precision="auto")
    paths["simx_auto"] = auto.run
    notes["simx_auto"] = auto.choice["line"]
    ep, why = openvino_ep_session(files["fp32"], threads)
    if ep is None:
        notes["ort_openvino_ep_bf16"] = f"skipped: {why}"
    else:
        notes["ort_openvino_ep_bf16"] = f"{why}; providers {ep.get_providers()}"
        name = ep.get_inputs()[0].name
        paths["ort_openvino_ep_bf16"] = lambda b: ep.run(None, {name: b})[0]
    for run in paths.values():  # warm-up (compilation, first-call allocations)
        run(x), run(x)
    return paths, notes


def measure_model(entry: catalogue.ModelEntry, files: dict[str, Path], images: list[Path], batch: int,
                  seconds: float, rounds: int, threads: int, flags: list[str], ref: list[float],
                  log: Callable[[str], None]) -> dict[str, Any]:
    from simx import Encoder
    from simx.export import calibration, verify
    from simx.run.session import read_spec

    spec = catalogue.get(entry.id)
    pre = spec.preprocess(entry.default_size)
    photos = calibration.pixels([calibration.photo(n) for n in verify.PHOTOS], pre)
    x = calibration.pixels([calibration.photo(n) for n in (verify.PHOTOS * batch)[:batch]], pre)
    paths, notes = build_paths(entry, files, x, threads, flags)
    truth = paths["torch_fp32"](photos)
    cosine = {k: _cos_min(run(photos), truth) for k, run in paths.items()}

    acc: dict[str, dict[str, list[float]]] = {k: {"lat": [], "img_s": []} for k in paths}
    for r in range(rounds):
        ref += reference.sgemm_gflops(2048, repeats=2)["gflops_samples"]
        time.sleep(0.3)
        order = list(paths) if r % 2 == 0 else list(paths)[::-1]  # alternate the order too
        for name in order:
            lat = bench.time_calls(lambda: paths[name](x), seconds / rounds, warmup=0, min_calls=2)
            acc[name]["lat"] += lat
            acc[name]["img_s"].append(batch * len(lat) / sum(lat))
            log(f"  {entry.id} round {r + 1}/{rounds} {name}: {acc[name]['img_s'][-1]:.2f} img/s")
    gflops, _, _ = bench.model_gflops(files["fp32"], read_spec(files["fp32"]))
    base = sum(acc["torch_fp32"]["lat"]) / len(acc["torch_fp32"]["lat"])
    rows = {}
    for name in ORDER:
        if name not in acc:
            continue
        lat = acc[name]["lat"]
        img_s = batch * len(lat) / sum(lat)
        rows[name] = {"img_s": img_s, "x_torch_fp32": img_s / (batch / base),
                      "rounds_img_s": acc[name]["img_s"], "latency_ms": bench.latency_ms(lat),
                      "min_cosine_vs_torch_fp32": cosine[name], "note": notes.get(name, "")}

    # End-to-end through the Encoder, against the same session's model-only rate.
    e2e = {}
    jpegs = [images[i % len(images)] for i in range(max(3 * batch, 24))]
    for key, file_key, kw in (("simx_auto", "fp32", {"provider": "auto", "precision": "auto"}),
                              ("simx_int8_static", "static", {"provider": "cpu"}),
                              ("simx_fp32", "fp32", {"provider": "cpu"})):
        enc = Encoder(files[file_key], threads=threads, **kw)  # auto: reads this run's decision
        enc.embed(jpegs[:2 * batch], batch_size=batch)  # warm-up
        xs = np.stack([enc.prepare(p) for p in jpegs])
        model_s, e2e_s = [], []
        for _ in range(2):
            t0 = time.perf_counter()
            for i in range(0, len(xs), batch):
                enc.run(xs[i:i + batch])
            model_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            enc.embed(jpegs, batch_size=batch)
            e2e_s.append(time.perf_counter() - t0)
        m, e = len(jpegs) / min(model_s), len(jpegs) / min(e2e_s)
        e2e[key] = {"model_only_img_s": m, "end_to_end_img_s": e, "ratio": e / m,
                    "workers": enc.workers, "images": len(jpegs),
                    "ran": f"{enc.provider} {enc.precision} {enc.path.name}"}
        log(f"  {entry.id} e2e {key}: {e:.2f} img/s vs model-only {m:.2f} ({100 * e / m:.0f}%)")
    return {"id": entry.id, "source": entry.source, "weights": "random", "batch_size": batch,
            "gflops_per_image": gflops, "paths": rows, "skipped": {k: v for k, v in notes.items()
                                                                    if v.startswith("skipped")},
            "end_to_end": e2e,
            "files": {k: {"name": str(p.relative_to(p.parent.parent) if k == "dynamic" else p.name),
                          "mb": round(p.stat().st_size / 2**20, 1)} for k, p in files.items()}}


LABELS = {
    "torch_fp32": "torch eager fp32",
    "torch_bf16": "torch eager + `torch.autocast(\"cpu\", torch.bfloat16)`",
    "openvino": "OpenVINO's own runtime on simx's fp32 `.onnx` (default settings)",
    "simx_fp32": "simx fp32 (onnxruntime CPU provider)",
    "simx_int8_static": "**simx int8 static QDQ, batched** (new default int8)",
    "simx_int8_dynamic_per_image": "simx int8 dynamic, one image per call (as the Encoder runs it)",
    "ort_openvino_ep_bf16": "onnxruntime + OpenVINO EP plugin, bf16",
    "simx_int8_openvino": "simx int8 static QDQ through `--provider openvino-runtime`",
    "simx_auto": "**simx `--precision auto`** (its choice: see notes)",
}


def to_markdown(result: dict[str, Any]) -> str:
    f = result["machine"]
    ms = result["models"]
    lines = [
        "# simx beside its peers (model-only, one run)",
        "",
        f"Measured {result['timestamp']} on **{f['cpu_model']}, {f['usable_cores']} cores**, ISA "
        f"flags {', '.join(result['isa_flags'])}"
        f"{'' if any(x.startswith('amx') for x in result['isa_flags']) else ' (no AMX)'}. python {f['python']}, torch "
        f"{result['torch_version']}, onnxruntime {f['onnxruntime']}, openvino "
        f"{result.get('openvino_version')}, simx {f['simx']}. Batch {result['batch_size']}, "
        f"{result['threads']} threads, **random weights** (speed does not depend on them), "
        f"{result['seconds']:g} s per path and model in {result['rounds']} alternated rounds. "
        f"numpy sgemm reference {result['reference_gflops']:.0f} GFLOP/s (2048², median of the "
        "samples taken between rounds).",
        "",
        "| path | " + " | ".join(f"{m['id']} img/s | × torch fp32 | min cos" for m in ms) + " |",
        "|---|" + "---:|---:|---:|" * len(ms),
    ]
    for name in ORDER:
        cells = []
        for m in ms:
            r = m["paths"].get(name)
            cells += (["—", "—", "—"] if r is None else
                      [f"{r['img_s']:.2f}", f"{r['x_torch_fp32']:.2f}",
                       f"{r['min_cosine_vs_torch_fp32']:.5f}"])
        lines.append(f"| {LABELS[name]} | " + " | ".join(cells) + " |")
    lines += [""]
    for m in ms:
        p = m["paths"]
        peers = {k: p[k]["img_s"] for k in PEERS if k in p}
        best = max(peers, key=peers.get)
        lines.append(f"- {m['id']}: simx auto {p['simx_auto']['img_s']:.2f} img/s = "
                     f"**{p['simx_auto']['img_s'] / peers[best]:.2f}× the fastest peer** "
                     f"({LABELS[best]}, {peers[best]:.2f} img/s); min cosine vs torch fp32 "
                     f"{p['simx_auto']['min_cosine_vs_torch_fp32']:.5f}.")
    lines += ["", "min cos: against torch fp32 on the four verification photos (astronaut, "
              "coffee, chelsea, rocket), preprocessed exactly."]
    notes = {f"{k}: {v}" for m in ms for k, v in ((k, r["note"]) for k, r in m["paths"].items()) if v}
    notes |= {f"{k}: {v}" for m in ms for k, v in m["skipped"].items()}
    lines += ["", "Notes:"] + [f"- {n}" for n in sorted(notes)]
    lines += ["", "## int8: static vs dynamic", ""]
    for m in ms:
        p = m["paths"]
        s, d, f32 = (p[k]["img_s"] for k in ("simx_int8_static", "simx_int8_dynamic_per_image",
                                             "simx_fp32"))
        lines.append(f"- {m['id']}: static batched {s:.2f} img/s = {s / f32:.2f}× the fp32 file; "
                     f"dynamic one image a call {d:.2f} img/s = {d / f32:.2f}× "
                     f"(static / dynamic {s / d:.2f}×).")
    lines += ["", "## End-to-end keeps up (decode + exact preprocess + model, `simx.Encoder`)", "",
              "| model | path | ran | model-only img/s | end-to-end img/s | e2e / model-only | decode workers |",
              "|---|---|---|---:|---:|---:|---:|"]
    for m in ms:
        for k, e in m["end_to_end"].items():
            lines.append(f"| {m['id']} | {k} | {e.get('ran', '')} | {e['model_only_img_s']:.2f} | "
                         f"{e['end_to_end_img_s']:.2f} | "
                         f"{100 * e['ratio']:.0f}% | {e['workers']} |")
    lines += ["", f"The {result['n_images']} JPEGs of `samples/`, repeated to "
              f"{ms[0]['end_to_end']['simx_fp32']['images']} images; best of two alternated runs each. "
              "End-to-end runs `simx.Encoder` (decode pool sized from the measured speeds) on "
              "the auto choice and on the two CPU-provider files.", "",
              f"Machine load (1/5/15 min, `os.getloadavg()`): at start {result['load_at_start']}, "
              f"at end {result['load_at_end']}. {result.get('load_note', '')}", "",
              "Reproduce: `python3 benchmarks/compare_torch.py --models-dir DIR` (raw figures in "
              "the .json beside this file)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS))
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None, help="Default: the usable cores.")
    ap.add_argument("--seconds", type=float, default=12.0, help="Timed seconds per path and model.")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--images", type=Path, default=ROOT / "samples")
    ap.add_argument("--models-dir", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--load-note", default="", help="A sentence about other processes running.")
    args = ap.parse_args()

    import torch

    os.environ["SIMX_USER_CACHE"] = tempfile.mkdtemp(prefix="simx-compare-")  # auto: measured now
    facts = sysinfo.machine_facts()
    load_start = list(os.getloadavg())
    threads = args.threads or facts["usable_cores"]
    flags = isa_flags()
    images = sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    log = lambda s: print(s, flush=True)  # noqa: E731
    ref: list[float] = []
    models = []
    for mid in args.models.split(","):
        entry = catalogue.get(mid)
        files = ensure_files(entry, args.models_dir, log)
        models.append(measure_model(entry, files, images, args.batch_size, args.seconds,
                                    args.rounds, threads, flags, ref, log))
    try:
        import openvino

        ov_version = openvino.__version__
    except ImportError:
        ov_version = None
    result = {
        "schema": "simx-compare/2", "timestamp": facts["timestamp"], "machine": facts,
        "isa_flags": flags, "torch_version": torch.__version__, "openvino_version": ov_version,
        "threads": threads, "batch_size": args.batch_size, "seconds": args.seconds,
        "rounds": args.rounds, "n_images": len(images), "reference_gflops": float(np.median(ref)),
        "reference_samples": ref, "load_at_start": load_start, "load_at_end": list(os.getloadavg()),
        "load_note": args.load_note, "models": models,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"compare_{host_slug(facts)}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    md = to_markdown(result)
    stem.with_suffix(".md").write_text(md)
    print(md)
    print(f"wrote {stem}.md and .json")


if __name__ == "__main__":
    main()
