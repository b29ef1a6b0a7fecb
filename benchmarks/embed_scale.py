"""Full ``simx embed`` at scale (issue 10): peak RSS and time of a first embed, of an
unchanged re-run, and of adding one image, against the number of files.

Stand-in model: tests/tiny_model.py with a 768-d output (a real simx model file: spec,
preprocessing, session, decode pool, cache; ~1000x cheaper than DINOv2). Corpus: N small
PNGs (8x8, 256 distinct ones) in folders of 1000, under one root; a case of N files embeds
the first N/1000 folders. Each case runs ``simx.embed.pipeline.embed_into_cache`` in a fresh
subprocess, so ru_maxrss is that case's peak.

``--stub`` replaces decode + model by random 768-d rows handed to the same driver (the
``batches=`` hook the Ray engine uses): listing, diff, streaming to segments, commits and
failure bookkeeping run unchanged, at a rate that makes 1M files affordable on 2 cores.

    python benchmarks/embed_scale.py --work /tmp/simx_es --out benchmarks/results/embed_scale_<machine> 200000 1000000
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DIM = 768
PER_DIR = 1000


def corpus(root: Path, n: int) -> list[str]:
    """The folders holding the first ``n`` files, made if missing."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    pngs = [cv2.imencode(".png", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))[1].tobytes()
            for _ in range(256)]
    dirs = []
    for d in range((n + PER_DIR - 1) // PER_DIR):
        folder = root / f"d{d:05d}"
        dirs.append(str(folder))
        if (folder / ".done").exists():
            continue
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(PER_DIR):
            (folder / f"img_{i:04d}.png").write_bytes(pngs[(d * PER_DIR + i) % 256])
        (folder / ".done").write_bytes(b"")
    return dirs


def _disk(d: Path) -> dict[str, int]:
    return {str(p.relative_to(d)): p.stat().st_size for p in d.rglob("*") if p.is_file()}


def _stub(todo: list[str]):
    import numpy as np

    from simx.run.encoder import Batch

    rng = np.random.default_rng(0)
    for s in range(0, len(todo), 256):
        idx = list(range(s, min(s + 256, len(todo))))
        yield Batch(idx, rng.standard_normal((len(idx), DIM), dtype=np.float32))


def _case(model: str, cache: str, dirs: list[str], stub: bool) -> dict:
    from simx.run.encoder import Encoder
    from simx.embed.pipeline import embed_into_cache

    before = _disk(Path(cache)) if Path(cache).exists() else {}
    enc = Encoder(model, provider="cpu")
    t = time.perf_counter()
    rep = embed_into_cache(dirs, enc, cache, progress=False, batches=_stub if stub else None)
    secs = time.perf_counter() - t
    after = _disk(Path(cache))
    written = sum(sz for f, sz in after.items() if before.get(f) != sz or f == "cache.json")
    return {"seconds": round(secs, 2), "peak_rss_mb": round(resource.getrusage(
                resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "embedded": rep.embedded, "unchanged": rep.unchanged, "rows": rep.rows,
            "commits": rep.commits, "files_per_s": round((rep.embedded + rep.unchanged) / secs),
            "bytes_on_disk": sum(after.values()), "bytes_written": written,
            "written_fraction": round(written / max(1, sum(after.values())), 6)}


def _run(model: Path, cache: Path, dirs: list[str], stub: bool) -> dict:
    arg = json.dumps({"model": str(model), "cache": str(cache), "dirs": dirs, "stub": stub})
    out = subprocess.run([sys.executable, __file__, "--case", arg], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ns", nargs="*", type=int)
    ap.add_argument("--work", type=Path, default=Path("/tmp/simx_embed_scale"))
    ap.add_argument("--out", type=Path)
    ap.add_argument("--case")
    ap.add_argument("--stub", action="store_true", help="random rows instead of decode + model")
    a = ap.parse_args()
    if a.case:
        c = json.loads(a.case)
        print(json.dumps(_case(c["model"], c["cache"], c["dirs"], c["stub"])))
        return
    sys.path[:0] = [str(ROOT / "tests")]
    from tiny_model import build_tiny_model

    from simx.core.machine import machine_facts

    a.work.mkdir(parents=True, exist_ok=True)
    model = a.work / "tiny-768.onnx"
    build_tiny_model(model, dim=DIM)
    res = {"machine": machine_facts(), "dim": DIM, "stub": a.stub, "cases": []}
    for n in a.ns:
        dirs = corpus(a.work / "corpus", n)
        cache = a.work / f"cache_{n}"
        shutil.rmtree(cache, ignore_errors=True)
        load0 = os.getloadavg()[0]
        full = _run(model, cache, dirs, a.stub)
        rerun = _run(model, cache, dirs, a.stub)
        extra = Path(dirs[0]) / "zz_added.png"
        shutil.copyfile(Path(dirs[0]) / "img_0001.png", extra)
        try:
            add1 = _run(model, cache, dirs, a.stub)
        finally:
            extra.unlink()
        case = {"n": n, "full": full, "rerun": rerun, "add1": add1,
                "loadavg": [round(load0, 2), round(os.getloadavg()[0], 2)]}
        res["cases"].append(case)
        print(json.dumps(case), flush=True)
        shutil.rmtree(cache, ignore_errors=True)
    if a.out:
        a.out.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
