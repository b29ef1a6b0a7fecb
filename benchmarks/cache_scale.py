"""Cache format 2 scale benchmark (issue 10): full build and add-one-row through CacheWriter.

Stand-in: no model; random float32 rows written straight through CacheWriter with a
768-d spec from tests/tiny_model.py. Each case runs in a fresh subprocess so peak RSS
(ru_maxrss) is per case. Usage: python benchmarks/cache_scale.py OUT_STEM N [N ...]
"""
from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DIM = 768
CHUNK = 50_000


def _files(d: Path) -> dict[str, int]:
    return {str(p.relative_to(d)): p.stat().st_size for p in d.rglob("*") if p.is_file()}


def _case(kind: str, cache: str, n: int) -> dict:
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    import numpy as np

    from runtime.cache import CacheWriter, Row
    from tiny_model import tiny_spec

    spec = tiny_spec(dim=DIM)
    rng = np.random.default_rng(0)
    d = Path(cache)
    before = _files(d) if d.exists() else {}
    t = time.perf_counter()
    if kind == "build":
        with CacheWriter(d, spec) as w:
            for s in range(0, n, CHUNK):
                m = min(CHUNK, n - s)
                rows = [Row(f"/fake/img_{i:08d}.png", 1000 + i, 10**18 + i) for i in range(s, s + m)]
                w.add(rows, rng.standard_normal((m, DIM), dtype=np.float32))
                w.commit()
    else:
        with CacheWriter(d, spec) as w:
            w.add([Row("/fake/zz_new.png", 1, 10**18)], rng.standard_normal((1, DIM), dtype=np.float32))
            w.commit()
    secs = time.perf_counter() - t
    after = _files(d)
    written = sum(sz for f, sz in after.items() if before.get(f) != sz or f == "cache.json")
    return {"kind": kind, "n": n, "seconds": round(secs, 3),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "bytes_on_disk": sum(after.values()), "bytes_written": written,
            "written_fraction": round(written / max(1, sum(after.values())), 6)}


def _run(kind: str, cache: Path, n: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--case", kind, str(cache), str(n)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _cpu() -> dict:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    get = {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in info.splitlines()) if v}
    flags = set(get.get("flags", "").split())
    isa = sorted(f for f in flags if f.startswith(("avx", "sse", "fma", "amx")))
    return {"model": get.get("model name", platform.processor()), "isa": isa,
            "cores": os.cpu_count(), "loadavg": os.getloadavg()}


def main(argv: list[str]) -> None:
    if argv and argv[0] == "--case":
        print(json.dumps(_case(argv[1], argv[2], int(argv[3]))))
        return
    stem, ns = Path(argv[0]), [int(a) for a in argv[1:]]
    res = {"machine": _cpu(), "dim": DIM, "cases": []}
    for n in ns:
        tmp = Path(tempfile.mkdtemp(prefix="simx_cs_"))
        try:
            b = _run("build", tmp / "c", n)
            a = _run("add1", tmp / "c", n)
            res["cases"].append({"n": n, "build": b, "add1": a, "loadavg": os.getloadavg()})
            print(n, b, a, flush=True)
        finally:
            shutil.rmtree(tmp)
    stem.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")
    m = res["machine"]
    lines = ["# cache format 2 scale (issue 10)", "",
             f"CPU: {m['model']}, {m['cores']} cores, ISA: {' '.join(m['isa'])}; loadavg at start {m['loadavg']}", "",
             "Stand-in: random float32 768-d rows through CacheWriter (commit every 50k rows), fresh subprocess per case.", "",
             "| N | build s | build peak RSS MB | bytes on disk | add-1 s | add-1 bytes written | fraction | add-1 peak RSS MB |",
             "|---|---|---|---|---|---|---|---|"]
    for c in res["cases"]:
        b, a = c["build"], c["add1"]
        lines.append(f"| {c['n']} | {b['seconds']} | {b['peak_rss_mb']} | {b['bytes_on_disk']} | {a['seconds']} | {a['bytes_written']} | {a['written_fraction']:.4%} | {a['peak_rss_mb']} |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
