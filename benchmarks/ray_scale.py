"""Throughput of ``simx embed --engine ray`` with 1 and 2 workers against the single-process
engine, on the same files, and the per-image costs that bound a cluster.

    python benchmarks/ray_scale.py --model /tmp/models/dinov2-small.onnx --images 96 \\
        --tiny-images 384 --work /tmp/ray_scale --out benchmarks/results/ray_scale_<machine>.json

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
Plus the listing rate (``scan`` over a tree of ``--list-files`` files), the
decode+preprocess cost per image on one core (the corpus's ~0.2-0.3 MP crops, and
12 MP camera-sized JPEGs), and the unchanged re-run rate. Each engine runs ``--repeat``
times, the order reversed every other round; every run is reported with the load
average beside it: the machine is shared.

The cost of handing rows back to the driver (the design ray_engine.py chose) is measured
apart, with a null actor that returns ready-made 768-d blocks (no model), so the driver
is the bottleneck:
- ``receive``: Ray Data -> ``iter_batches`` -> RayBatches' per-block bookkeeping;
- ``receive+write``: the same, plus ``CacheWriter.add`` per block and one commit;
- ``write only`` (no Ray): ``CacheWriter.add`` + commit of the same rows from memory,
  committing every block, every 1024 rows, and once.
Driver CPU seconds per 1000 rows from each, and the bytes per row in a Ray block.
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
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "benchmarks")]

from conftest import PHOTO_NAMES, load_photo  # noqa: E402
from machine import machine_facts  # noqa: E402
from tiny_model import build_tiny_model, tiny_spec  # noqa: E402

from simx.run.encoder import Batch, Encoder  # noqa: E402
from simx.embed.pipeline import embed_into_cache  # noqa: E402
from simx.embed.listing import scan  # noqa: E402
from simx.embed.ray_engine import RayBatches  # noqa: E402
from simx.embed.listing import scan_any  # noqa: E402

DIM = 768  # the tiny model and the null actor give DINOv2-B/ViT-B-sized rows (3 KB)


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
    """Decode + exact preprocess, ms per image on one core (one thread, the caller's)."""
    enc = Encoder(model, provider="cpu", threads=1)
    enc.prepare(files[0])  # warm-up: first-call set-up is not per image
    t0 = time.perf_counter()
    for f in files:
        enc.prepare(f)
    return 1000 * (time.perf_counter() - t0) / len(files)


def camera_jpegs(d: Path, n: int) -> list[Path]:
    """``n`` 4032x3024 (12 MP) JPEGs, the size a phone writes: the photos upscaled."""
    from PIL import Image

    d.mkdir(parents=True, exist_ok=True)
    out = []
    for j in range(n):
        p = d / f"cam_{j:02d}.jpg"
        if not p.exists():
            a = load_photo(PHOTO_NAMES[j % len(PHOTO_NAMES)])
            a = np.stack([a] * 3, axis=2) if a.ndim == 2 else a[..., :3]
            Image.fromarray(a).resize((4032, 3024), Image.BICUBIC).save(p, quality=90)
        out.append(p)
    return out


def listing_rate(root: Path, n: int) -> dict[str, Any]:
    """``scan`` over ``n`` empty .jpg files in folders of 1000 (scan stats, never reads)."""
    for j in range(n):
        p = root / f"d{j // 1000:03d}" / f"img_{j:07d}.jpg"
        if j % 1000 == 0:
            p.parent.mkdir(parents=True, exist_ok=True)
        if not p.exists():
            p.touch()
    rates = []
    for _ in range(2):
        t0 = time.perf_counter()
        got = len(scan([root]))
        rates.append(got / (time.perf_counter() - t0))
    assert got == n, (got, n)
    return {"files": n, "files_per_s": [round(r) for r in rates]}


class NullActor:
    """A Ray Data worker with no model: returns EncoderActor's columns for a block at once."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.emb = np.random.default_rng(0).standard_normal((4096, dim), dtype=np.float32)

    def __call__(self, block: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(block["i"])
        return {"i": np.asarray(block["i"], np.int64), "emb": self.emb[:n].copy(),
                "ok": np.ones(n, bool), "error": np.array([""] * n, dtype=object),
                "provider": np.array(["CPUExecutionProvider"] * n, dtype=object)}


def _rows(n: int, base: int = 0) -> list[Any]:
    from simx.cache import Row

    return [Row(f"/data/photos/{(base + i) // 1000:05d}/IMG_{base + i:08d}.jpg", 2_500_000 + i,
                10**18 + i, 10**18 + i, 10**6 + i) for i in range(n)]


def write_only(work: Path, rows: int, block: int, commit_every: int) -> dict[str, Any]:
    """CacheWriter.add per block + commits, from memory: the driver's write share."""
    from simx.cache import CacheWriter

    d = work / "write_only"
    shutil.rmtree(d, ignore_errors=True)
    emb = np.random.default_rng(0).standard_normal((block, DIM), dtype=np.float32)
    cpu0, t0 = _cpu_s(), time.perf_counter()
    with CacheWriter(d, tiny_spec(dim=DIM)) as w:
        since = 0
        for s in range(0, rows, block):
            w.add(_rows(min(block, rows - s), s), emb[:min(block, rows - s)])
            since += block
            if commit_every and since >= commit_every:
                w.commit()
                since = 0
        w.commit()
    wall, cpu = time.perf_counter() - t0, _cpu_s() - cpu0
    shutil.rmtree(d)
    return {"case": f"write only, commit every {commit_every or 'end'}", "rows": rows,
            "driver_cpu_s_per_1000": round(1000 * cpu / rows, 3),
            "rows_per_s": round(rows / wall), "load": _load()}


def hand_back(work: Path, rows: int, block: int, repeat: int) -> dict[str, Any]:
    """Driver CPU per 1000 rows received from Ray (and written), with a null actor."""
    import ray
    from ray.data.block import BlockAccessor

    from simx.cache import CacheWriter

    sample = NullActor(DIM)({"i": np.arange(block)})
    arrow = BlockAccessor.batch_to_block(sample)
    out: dict[str, Any] = {
        "block_rows": block,
        "bytes_per_row_in_ray_block": round(BlockAccessor.for_block(arrow).size_bytes() / block, 1),
        "bytes_per_row_embedding": DIM * 4, "runs": []}
    cores = os.cpu_count() or 1
    ray.init(address="local", num_cpus=cores, include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.1", logging_level="WARNING")
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        rb = RayBatches(Path("null.onnx"), address=None, workers=1, gpus_per_worker=0.0,
                        cpus_per_worker=1.0, provider="cpu", threads=1, exif_transpose=False,
                        fast=False, batch_size=None, rows_per_task=block, progress=False)
        for rep in range(repeat):
            for mode in ("receive", "receive+write"):
                ds = ray.data.from_items([{"i": i} for i in range(rows)],
                                         override_num_blocks=rows // block)
                res = ds.map_batches(NullActor, fn_constructor_args=(DIM,), batch_size=block,
                                     compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1,
                                     batch_format="numpy")
                d = work / "hand_back"
                shutil.rmtree(d, ignore_errors=True)
                seen: set[int] = set()
                got = 0
                marks: list[tuple[float, float, int]] = []
                with CacheWriter(d, tiny_spec(dim=DIM)) as w:
                    for b in res.iter_batches(batch_size=None, batch_format="numpy"):
                        batch = rb._to_batch(b, seen)
                        if mode == "receive+write":
                            w.add(_rows(len(batch.indices), got), batch.embeddings)
                        got += len(batch.indices)
                        marks.append((time.perf_counter(), _cpu_s(), got))
                    if mode == "receive+write":
                        w.commit()
                        marks.append((time.perf_counter(), _cpu_s(), got))
                shutil.rmtree(d, ignore_errors=True)
                assert got == rows
                # From the first block on: Ray's start-up and the actor's launch left out.
                (t0, c0, n0), (t1, c1, n1) = marks[0], marks[-1]
                r = {"case": mode, "round": rep + 1, "rows": n1 - n0,
                     "driver_cpu_s_per_1000": round(1000 * (c1 - c0) / (n1 - n0), 3),
                     "rows_per_s": round((n1 - n0) / (t1 - t0)), "load": _load()}
                print(json.dumps(r), flush=True)
                out["runs"].append(r)
    finally:
        ray.shutdown()
    for rep in range(repeat):
        for every in (block, 1024, 0):
            r = write_only(work, rows, block, every) | {"round": rep + 1}
            print(json.dumps(r), flush=True)
            out["runs"].append(r)
    return out


def same_rows(a: Path, b: Path) -> float:
    """Max |difference| between two caches' rows, matched by path (Ray's blocks may commit
    in another order than a single-process run's); the same paths once each."""
    from simx.cache import FeatureCache

    fa, fb = FeatureCache(a), FeatureCache(b)
    assert sorted(fa.paths) == sorted(fb.paths) and len(set(fa.paths)) == len(fa.paths)
    ea, eb = np.asarray(fa.embeddings), np.asarray(fb.embeddings)
    order = np.array([fb.row(p) for p in fa.paths], np.intp)
    return float(np.abs(ea - eb[order]).max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="an exported .onnx (e.g. dinov2-small)")
    ap.add_argument("--images", type=int, default=96, help="files for --model")
    ap.add_argument("--tiny-images", type=int, default=384, help="files for the tiny model")
    ap.add_argument("--repeat", type=int, default=2, help="runs of each engine")
    ap.add_argument("--list-files", type=int, default=20000, help="files for the listing rate")
    ap.add_argument("--hand-back-rows", type=int, default=20000, help="rows for the null actor")
    ap.add_argument("--work", type=Path, default=Path("/tmp/simx_ray_scale"))
    ap.add_argument("--out", type=Path, required=True, help="the .json to write")
    args = ap.parse_args()

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    work = args.work
    files = build_corpus(work / "corpus", max(args.images, args.tiny_images))
    tiny = build_tiny_model(work / "tiny-test.onnx", dim=DIM)
    results: dict[str, Any] = {"machine": machine_facts(), "runs": {}}
    jobs = {"model": (args.model, files[:args.images]), "tiny": (tiny, files[:args.tiny_images])}
    order = [("single", 1), ("ray", 1), ("ray", 2)]
    for label, (model, subset) in jobs.items():
        folder = work / f"set_{label}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for f in subset:
            (folder / f.name).symlink_to(f)
        runs = []
        for rep in range(args.repeat):
            for engine, workers in (order if rep % 2 == 0 else order[::-1]):
                r = run_engine(engine, folder, model,
                               work / f"cache_{label}_{engine}{workers}", workers)
                r["round"] = rep + 1
                print(json.dumps(r), flush=True)
                runs.append(r)
        ref = work / f"cache_{label}_single1"
        for engine, workers in (("ray", 1), ("ray", 2)):
            diff = same_rows(work / f"cache_{label}_{engine}{workers}", ref)
            runs.append({"check": f"{engine}{workers} vs single", "max_abs_diff": diff})
        results["runs"][label] = {
            "model": str(model.name), "runs": runs,
            "decode_preprocess_ms_per_img_1core": round(decode_ms(subset[:48], model), 2),
            "unchanged_rerun_files_per_s": round(rerun_rate(folder, model,
                                                            work / f"cache_{label}_ray2")),
        }
        print(json.dumps({k: v for k, v in results["runs"][label].items() if k != "runs"}),
              flush=True)
    cams = camera_jpegs(work / "camera", 8)
    results["decode_preprocess_ms_per_12mp_jpeg_1core"] = round(decode_ms(cams, args.model), 1)
    results["listing"] = listing_rate(work / "listing", args.list_files)
    print(json.dumps({"decode_12mp_ms": results["decode_preprocess_ms_per_12mp_jpeg_1core"],
                      "listing": results["listing"]}), flush=True)
    results["hand_back"] = hand_back(work, args.hand_back_rows, 64, args.repeat)
    results["machine"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
