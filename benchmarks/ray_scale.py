"""Throughput of ``simx embed --engine ray`` with 1 and 2 workers against the single-process
engine, on the same files, and the per-image costs that bound a cluster.

    python benchmarks/ray_scale.py --model /tmp/models/dinov2-small.onnx --images 96 \\
        --tiny-images 384 --work /tmp/ray_scale --out benchmarks/results/ray_scale_<machine>.md

Two models:
- the exported model given by ``--model`` (a real network: inference-bound on a CPU);
- the tiny test model (tests/tiny_model.py; ~1000x cheaper): decode- and overhead-bound,
  which is what a GPU node looks like to the CPU side.

Each engine embeds the same files into a fresh cache. Ray runs use a private local
instance with as many CPUs as the machine; 1 worker gets every core (onnxruntime threads =
cores), 2 workers half each, so every engine has the same cores. Figures per run:
- wall: the whole call, Ray's start-up and the actors' model load included;
- steady: rows per second between the first and the last block the driver received;
- driver CPU: user+sys seconds of the driver process (its Ray core worker threads
  included) per 1000 images, i.e. what caps one driver however many nodes feed it.
Plus the listing rate (``scan``), the decode+preprocess cost per image on one core, and the
unchanged re-run rate. One run each, load average beside it: the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from conftest import PHOTO_NAMES, load_photo  # noqa: E402
from tiny_model import build_tiny_model  # noqa: E402

from simx.encoder import Batch, Encoder  # noqa: E402
from simx.indexer import embed_into_cache, scan  # noqa: E402
from simx.ray_engine import RayBatches  # noqa: E402
from simx.sysinfo import machine_facts  # noqa: E402
from simx.uri import scan_any  # noqa: E402


def build_corpus(d: Path, n: int) -> list[Path]:
    """``n`` JPEGs cut from the scikit-image photos (distinct crops, camera-like sizes)."""
    from PIL import Image

    d.mkdir(parents=True, exist_ok=True)
    photos = []
    for name in PHOTO_NAMES:
        a = load_photo(name)
        photos.append(np.stack([a] * 3, axis=2) if a.ndim == 2 else a[..., :3])
    out = []
    for j in range(n):
        a = photos[j % len(photos)]
        h, w = a.shape[:2]
        k = j // len(photos)
        crop = a[k % 7: h - (k * 3) % 11, (k * 5) % 13: w - k % 5]
        p = d / f"{j // 96:02d}" / f"img_{j:05d}.jpg"
        p.parent.mkdir(exist_ok=True)
        if not p.exists():
            Image.fromarray(np.ascontiguousarray(crop)).save(p, quality=90)
        out.append(p)
    return out


class TimedRayBatches(RayBatches):
    """RayBatches that notes when each block reached the driver."""

    def __init__(self, *a: Any, **k: Any) -> None:
        super().__init__(*a, **k)
        self.arrivals: list[tuple[float, int, float]] = []  # (when, rows, driver CPU s)

    def __call__(self, todo: list[str]) -> Iterator[Batch]:
        for b in super().__call__(todo):
            self.arrivals.append((time.perf_counter(), len(b.indices) + len(b.failures),
                                  _cpu_s()))
            yield b


def isa_flags() -> list[str]:
    """The CPU flags that decide onnxruntime's kernels here (from /proc/cpuinfo)."""
    want = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_bf16",
            "amx_int8", "avx_vnni")
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [f for f in want if f in have]
    except OSError:
        pass
    return []


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def run_engine(engine: str, folder: Path, model: Path, cache: Path, workers: int) -> dict[str, Any]:
    shutil.rmtree(cache, ignore_errors=True)
    cores = os.cpu_count() or 1
    load0, cpu0, t0 = _load(), _cpu_s(), time.perf_counter()
    steady = steady_cpu = first_block = None
    if engine == "single":
        enc = Encoder(model, provider="cpu", threads=cores)
        rep = embed_into_cache([folder], enc, cache, commit_seconds=0, progress=False)
    else:
        enc = Encoder(model, provider="cpu", threads=1)
        batches = TimedRayBatches(enc.path.resolve(), address=None, workers=workers,
                                  gpus_per_worker=0.0, cpus_per_worker=cores / workers,
                                  provider="cpu", threads=None, exif_transpose=False,
                                  fast=False, batch_size=None, rows_per_task=64, progress=False)
        rep = embed_into_cache([folder], enc, cache, commit_seconds=0, progress=False,
                               batches=batches, lister=scan_any)
        a = batches.arrivals
        first_block = a[0][0] - t0 if a else None
        if len(a) > 2 and a[-1][0] > a[0][0]:
            later = sum(n for _, n, _ in a[1:])
            steady = later / (a[-1][0] - a[0][0])
            steady_cpu = 1000 * (a[-1][2] - a[0][2]) / later
    wall = time.perf_counter() - t0
    cpu = _cpu_s() - cpu0
    return {"engine": engine, "workers": workers, "images": rep.embedded, "failed": rep.failed,
            "wall_s": round(wall, 2), "img_per_s_wall": round(rep.embedded / wall, 2),
            "img_per_s_steady": round(steady, 2) if steady else None,
            "first_block_s": round(first_block, 2) if first_block else None,
            "driver_cpu_s_per_1000": round(1000 * cpu / max(1, rep.embedded), 2),
            "driver_cpu_s_per_1000_steady": round(steady_cpu, 2) if steady_cpu else None,
            "commits": rep.commits, "load_before": load0, "load_after": _load()}


def rerun_rate(folder: Path, model: Path, cache: Path) -> float:
    """Unchanged re-run through the Ray engine's path (no Ray is started: nothing to do)."""
    enc = Encoder(model, provider="cpu", threads=1)
    batches = RayBatches(enc.path.resolve(), address=None, workers=1, gpus_per_worker=0.0,
                         cpus_per_worker=1.0, provider="cpu", threads=None,
                         exif_transpose=False, fast=False, batch_size=None, rows_per_task=64,
                         progress=False)
    t0 = time.perf_counter()
    rep = embed_into_cache([folder], enc, cache, progress=False, batches=batches, lister=scan_any)
    assert rep.embedded == 0
    return rep.unchanged / (time.perf_counter() - t0)


def decode_ms(files: list[Path], model: Path) -> float:
    enc = Encoder(model, provider="cpu", threads=1)
    t0 = time.perf_counter()
    for f in files:
        enc.prepare(f)
    return 1000 * (time.perf_counter() - t0) / len(files)


def listing_rate(folder: Path) -> tuple[int, float]:
    t0 = time.perf_counter()
    n = len(scan([folder]).files)
    return n, n / (time.perf_counter() - t0)


def same_rows(a: Path, b: Path) -> float:
    from simx.cache import FeatureCache

    fa, fb = FeatureCache(a), FeatureCache(b)
    assert list(fa.paths) == list(fb.paths)
    return float(np.abs(np.asarray(fa.embeddings) - np.asarray(fb.embeddings)).max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="an exported .onnx (e.g. dinov2-small)")
    ap.add_argument("--images", type=int, default=96, help="files for --model")
    ap.add_argument("--tiny-images", type=int, default=384, help="files for the tiny model")
    ap.add_argument("--work", type=Path, default=Path("/tmp/simx_ray_scale"))
    ap.add_argument("--out", type=Path, required=True, help="the .md to write (and a .json beside)")
    args = ap.parse_args()

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    work = args.work
    files = build_corpus(work / "corpus", max(args.images, args.tiny_images))
    tiny = build_tiny_model(work / "tiny-test.onnx")
    results: dict[str, Any] = {"machine": {**machine_facts(), "isa_flags": isa_flags()},
                               "runs": {}}
    jobs = {"model": (args.model, files[:args.images]), "tiny": (tiny, files[:args.tiny_images])}
    for label, (model, subset) in jobs.items():
        folder = work / f"set_{label}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for f in subset:
            (folder / f.name).symlink_to(f)
        runs = []
        for engine, workers in (("single", 1), ("ray", 1), ("ray", 2)):
            r = run_engine(engine, folder, model, work / f"cache_{label}_{engine}{workers}", workers)
            print(json.dumps(r), flush=True)
            runs.append(r)
        ref = work / f"cache_{label}_single1"
        for engine, workers in (("ray", 1), ("ray", 2)):
            diff = same_rows(work / f"cache_{label}_{engine}{workers}", ref)
            runs.append({"check": f"{engine}{workers} vs single", "max_abs_diff": diff})
        n, rate = listing_rate(folder)
        results["runs"][label] = {
            "model": str(model.name), "runs": runs,
            "decode_preprocess_ms_per_img_1core": round(decode_ms(subset[:48], model), 2),
            "listing_files_per_s": round(rate), "listed": n,
            "unchanged_rerun_files_per_s": round(rerun_rate(folder, model,
                                                            work / f"cache_{label}_ray2")),
        }
        print(json.dumps(results["runs"][label]), flush=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
