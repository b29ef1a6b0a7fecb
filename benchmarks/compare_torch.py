#!/usr/bin/env python3
"""simx side by side with what users run today, in ONE process, on the same models and images.

For each model (random weights: speed does not depend on their values) and batch size:

* **torch eager**, the old way: PIL decode + torchvision Resize/CenterCrop/ToTensor/
  Normalize, the torch module exactly as simx's exporter builds it, ``torch.inference_mode``,
  ``torch.set_num_threads(cores)``. Model-only and end-to-end (decode + preprocess + model,
  one after the other, as a plain loop does).
* **simx model-only**: the exported .onnx through ``simx.session`` on the same tensors.
* **simx end-to-end**: ``simx.Encoder.embed`` on the same JPEG files (threaded decode
  overlapped with inference).
* **efficiency**: model GFLOP/s ÷ numpy sgemm GFLOP/s measured in the same run (all cores),
  so the figures travel between machines.

The four variants alternate in ``--rounds`` rounds, each round after its own sgemm sample;
img/s is images ÷ seconds over all rounds, efficiency the median over rounds of
(round GFLOP/s ÷ that round's sgemm). Load that drifts during the run hits every variant.

Writes ``benchmarks/results/compare_<cpu>-<cores>c.md`` and ``.json`` with the machine facts.
Usage: ``python3 benchmarks/compare_torch.py [--seconds 10] [--batch-sizes 1,8]``.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from simx import bench, registry, sysinfo
from simx.session import open_model

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODELS = ("dinov2-small", "openclip-vit-b-32-laion2b_s34b_b79k")


def host_slug(facts: dict[str, Any]) -> str:
    """A file-name-safe machine label: CPU model and core count (hostnames are random here)."""
    cpu = re.sub(r"[^a-z0-9]+", "-", facts["cpu_model"].lower()).strip("-") or "cpu"
    return f"{cpu}-{facts['usable_cores']}c"


def torch_module(entry: registry.ModelEntry) -> Any:
    """The torch module exactly as the exporter builds it (random weights, eval mode), and
    the preprocessing the exporter records for it."""
    from simx.export import sources

    built = sources.build(entry, "random", entry.default_size)
    return built.module.eval(), built.preprocess


def torch_transform(p: Any) -> Callable[[Any], Any]:
    """The reference eval transform users run today: PIL + torchvision, from a PreprocessSpec."""
    from torchvision import transforms as T

    return T.Compose([
        T.Resize(p.resize, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(p.crop),
        T.ToTensor(),
        T.Normalize(p.mean, p.std),
    ])


class Reference:
    """Interleaved sgemm samples; the figure is their median (see simx.bench)."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self.last = 0.0

    def sample(self) -> None:
        sg = sysinfo.sgemm_gflops(2048, repeats=2)
        self.samples += sg["gflops_samples"]
        self.last = sg["gflops"]

    @property
    def gflops(self) -> float:
        return float(np.median(self.samples))


def measure_model(
    entry: registry.ModelEntry,
    onnx_path: Path,
    images: list[Path],
    batch_sizes: Sequence[int],
    seconds: float,
    rounds: int,
    ref: Reference,
    cores: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    import torch
    from PIL import Image

    torch.set_num_threads(cores)
    tmod, pre = torch_module(entry)
    tf = torch_transform(pre)
    ms = open_model(onnx_path, provider="cpu", threads=cores)
    gflops, gflops_source, _ = bench.model_gflops(onnx_path, ms.spec)
    from simx import Encoder

    enc = Encoder(onnx_path, provider="cpu", threads=cores)

    # The same tensors for both model-only runs: torchvision's output.
    pixels = torch.stack([tf(Image.open(p).convert("RGB")) for p in images])

    def torch_e2e(paths: list[Path], b: int) -> None:
        """The old way: decode and preprocess a batch, then run it, one step after another."""
        with torch.inference_mode():
            for i in range(0, len(paths), b):
                x = torch.stack([tf(Image.open(p).convert("RGB")) for p in paths[i:i + b]])
                tmod(x)

    def torch_model(x: Any) -> Any:
        with torch.inference_mode():
            return tmod(x)

    rows = []
    for b in batch_sizes:
        idx = [i % len(images) for i in range(b)]
        xt = pixels[idx].contiguous()
        xn = xt.numpy().copy()
        model_only = {"torch_model_only": lambda: torch_model(xt),
                      "simx_model_only": lambda: ms.run(xn)}
        streams = {"torch_e2e": lambda ps: torch_e2e(ps, b),
                   "simx_e2e": lambda ps: enc.embed(ps, batch_size=b)}
        for call in model_only.values():  # warm-up
            call(), call()
        for run in streams.values():
            run([images[i % len(images)] for i in range(2 * b)])

        # The four variants alternate in rounds, each round after its own sgemm sample,
        # so load that drifts during the run hits torch and simx alike.
        acc: dict[str, dict[str, list[float]]] = {
            k: {"lat": [], "images": [], "secs": [], "ratio": []}
            for k in (*model_only, *streams)
        }
        for r in range(rounds):
            ref.sample()
            sg = ref.last
            time.sleep(0.3)  # BLAS / OpenMP workers spin briefly after a call
            for name, call in model_only.items():
                lat = bench.time_calls(call, seconds / rounds, warmup=0, min_calls=1)
                acc[name]["lat"] += lat
                acc[name]["images"].append(b * len(lat))
                acc[name]["secs"].append(sum(lat))
                acc[name]["ratio"].append(b * len(lat) / sum(lat) / sg)
            for name, run in streams.items():
                rate = acc[name.replace("e2e", "model_only")]["images"][-1] / (
                    acc[name.replace("e2e", "model_only")]["secs"][-1])
                n = max(2 * b, int(np.ceil(rate * seconds / rounds)))
                paths = [images[(r * n + i) % len(images)] for i in range(n)]
                t0 = time.perf_counter()
                run(paths)
                dt = time.perf_counter() - t0
                acc[name]["images"].append(n)
                acc[name]["secs"].append(dt)
                acc[name]["ratio"].append(n / dt / sg)
        row: dict[str, Any] = {"batch_size": b}
        for name, a in acc.items():
            img_s = sum(a["images"]) / sum(a["secs"])
            row[name] = {
                "img_s": img_s,
                "images": sum(a["images"]),
                "img_s_per_sgemm_gflops": float(np.median(a["ratio"])),
                "rounds_img_s": [i / t for i, t in zip(a["images"], a["secs"])],
            }
            if a["lat"]:
                row[name]["latency_ms"] = bench.latency_ms(a["lat"])
            log(f"  {entry.id} b={b} {name}: {img_s:.2f} img/s ({sum(a['images'])} images)")
        rows.append(row)
    meta_gflops = ms.spec.gflops
    tmod = ms = enc = None  # free the models before the next one loads
    return {
        "id": entry.id,
        "source": entry.source,
        "weights": "random",
        "gflops_per_image": gflops,
        "gflops_source": gflops_source,
        "gflops_metadata": meta_gflops,
        "onnx_file_mb": round(onnx_path.stat().st_size / 2**20, 1),
        "rows": rows,
    }


def finish(result: dict[str, Any]) -> None:
    """Add efficiency and ratios once the run's reference is known."""
    for m in result["models"]:
        g = m["gflops_per_image"]
        for r in m["rows"]:
            for k in ("torch_model_only", "simx_model_only", "torch_e2e", "simx_e2e"):
                # median over rounds of (round img/s x GFLOP / that round's sgemm)
                r[k]["efficiency"] = r[k]["img_s_per_sgemm_gflops"] * g if g else None
            r["simx_vs_torch_model_only"] = r["simx_model_only"]["img_s"] / r["torch_model_only"]["img_s"]
            r["simx_vs_torch_e2e"] = r["simx_e2e"]["img_s"] / r["torch_e2e"]["img_s"]
            r["simx_e2e_vs_model_only"] = r["simx_e2e"]["img_s"] / r["simx_model_only"]["img_s"]


def to_markdown(result: dict[str, Any]) -> str:
    f = result["machine"]
    pct = lambda x: "n/a" if x is None else f"{100 * x:.0f}%"  # noqa: E731
    lines = [
        "# simx vs PyTorch eager",
        "",
        f"Measured {result['timestamp']} on **{f['cpu_model']}, {f['usable_cores']} cores** "
        f"(python {f['python']}, torch {result['torch_version']}, onnxruntime {f['onnxruntime']}, "
        f"numpy {f['numpy']}, simx {f['simx']}); reference numpy sgemm "
        f"**{result['reference']['gflops']:.1f} GFLOP/s** (2048² float32, all cores, median of "
        f"{len(result['reference']['samples'])} samples taken between the measurements).",
        "",
        "**Random weights** (the model hubs are unreachable here): speed does not depend on the "
        "weight values, so these figures hold for pretrained weights too.",
        "",
        f"Images: the {result['n_images']} JPEGs in `samples/`. Threads: torch "
        f"`set_num_threads({result['threads']})`, onnxruntime intra-op {result['threads']}. "
        f"{result['seconds']:g} s of model time per figure after warm-up, in {result['rounds']} "
        "rounds alternating the four variants, all in one process.",
        "",
        "| model | batch | torch eager img/s | simx model-only img/s | simx / torch | "
        "torch end-to-end img/s | simx end-to-end img/s | simx e2e / model-only | "
        "efficiency torch | efficiency simx |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in result["models"]:
        for r in m["rows"]:
            lines.append(
                f"| {m['id']} ({m['gflops_per_image']:.2f} GFLOP) | {r['batch_size']} | "
                f"{r['torch_model_only']['img_s']:.2f} | {r['simx_model_only']['img_s']:.2f} | "
                f"{r['simx_vs_torch_model_only']:.2f}× | {r['torch_e2e']['img_s']:.2f} | "
                f"{r['simx_e2e']['img_s']:.2f} | {pct(r['simx_e2e_vs_model_only'])} | "
                f"{pct(r['torch_model_only']['efficiency'])} | "
                f"{pct(r['simx_model_only']['efficiency'])} |"
            )
    la, lb = f.get("load_average_1_5_15"), result.get("load_average_at_end")
    lines += [
        "",
        "Efficiency = model GFLOP/s ÷ the same run's sgemm GFLOP/s, the median over rounds of "
        "each round's ratio (FLOPs counted from the exported ONNX graph: MatMul/Gemm/Conv/"
        "attention, multiply-add = 2; the same FLOPs for torch and simx). End-to-end = decode + preprocess + model on JPEG files: torch one "
        "step after another (PIL + torchvision), simx through `simx.Encoder` with decoding "
        "overlapped with inference.",
        "",
        f"Machine load (1/5/15 min) at start {la}, at end {lb}. "
        + (result.get("load_note") or ""),
        "",
        "Reproduce: `python3 benchmarks/compare_torch.py` (raw figures in the .json beside this file).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS))
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--seconds", type=float, default=10.0,
                    help="Timed model seconds per variant and batch size (split over the rounds).")
    ap.add_argument("--rounds", type=int, default=3, help="Alternations of the four variants.")
    ap.add_argument("--images", type=Path, default=ROOT / "samples")
    ap.add_argument("--models-dir", type=Path, default=None,
                    help="Reuse random-weight exports here (default: export into a temp dir).")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--load-note", default="", help="A sentence about other processes running.")
    args = ap.parse_args()

    import torch

    facts = sysinfo.machine_facts()
    cores = facts["usable_cores"]
    images = sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    if not images:
        raise SystemExit(f"no JPEGs in {args.images}")
    batch_sizes = [int(x) for x in args.batch_sizes.split(",")]
    log = lambda s: print(s, flush=True)  # noqa: E731

    tmp = tempfile.TemporaryDirectory(prefix="simx-compare-")
    models_dir = args.models_dir or Path(tmp.name)
    models_dir.mkdir(parents=True, exist_ok=True)
    from simx.export.api import export_model

    ref = Reference()
    out_models = []
    for mid in args.models.split(","):
        entry = registry.get(mid)
        path = models_dir / f"{entry.id}.onnx"
        if not path.exists():
            log(f"exporting {entry.id} with random weights into {models_dir} ...")
            path = Path(export_model(entry, weights="random", output_dir=models_dir))
        out_models.append(measure_model(entry, path, images, batch_sizes, args.seconds,
                                        args.rounds, ref, cores, log))
    ref.sample()

    result = {
        "schema": "simx-compare/1",
        "timestamp": facts["timestamp"],
        "machine": facts,
        "load_average_at_end": sysinfo.load_average(),
        "load_note": args.load_note,
        "torch_version": torch.__version__,
        "threads": cores,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "n_images": len(images),
        "images": [p.name for p in images],
        "reference": {"kind": "numpy sgemm 2048^2 float32, all cores, median",
                      "gflops": ref.gflops, "samples": ref.samples},
        "models": out_models,
    }
    finish(result)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"compare_{host_slug(facts)}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    md = to_markdown(result)
    stem.with_suffix(".md").write_text(md)
    print(md)
    print(f"wrote {stem}.md and .json")


if __name__ == "__main__":
    main()
