"""What dead rows and many segments cost a format-2 cache, and what one compaction costs.

The writer compacts automatically when dead rows pass COMPACT_DEAD_FRACTION of the stored
rows or the segments pass COMPACT_SEGMENTS (runtime/cache/merge.py). This measures both sides of
that trade on a stand-in cache (random float32 rows, 768-d, written through CacheWriter
with tests/tiny_model.py's spec; no model):

- against the dead fraction (0, 10, 25, 50, 75 % of the stored rows tombstoned, chosen at
  random, at a fixed segment count) and against the segment count (1 ... 2048, no dead rows);
- per cache, in fresh subprocesses: ``FeatureCache(dir)`` open time, reading every live
  row (``np.asarray(fc.embeddings)``), a gather of 1000 random rows (``fc.embeddings[idx]``)
  and 1000 ``fc.vector(path)`` calls, each with the reader's peak RSS; then adding one row
  and committing (the manifest, with its tombstone lists, is rewritten per commit);
  then one ``CacheWriter.compact()`` (seconds, bytes written, peak RSS); then the reads
  again on the compacted cache, which is the same live rows as one array.

The stored rows are fixed (``--rows``), so a cache with dead fraction f has (1-f)*rows
live rows; compare a case with its own compacted re-read. To build caches past the
writer's thresholds, the build subprocess raises COMPACT_SEGMENTS and passes
``compact_dead=1.0`` (benchmark-only: nothing in the runtime changes). The files were just
written, so reads come from the page cache (warm), which is the best case for many small
segments; a cold read would add a seek per segment file.

    python benchmarks/compaction.py --rows 200000 --out benchmarks/results/compaction_<machine>.md
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT / "tests")]

from machine import machine_block, machine_facts, peak_rss_mb  # noqa: E402

DIM = 768
GATHER = 1000


def _path(i: int) -> str:
    return f"/fake/photos/img_{i:08d}.png"



def _files(d: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(d)): (p.stat().st_ino, p.stat().st_size)
            for p in d.rglob("*") if p.is_file()}


def _written(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> int:
    """Bytes in files that are new or were replaced (another inode or size) since ``before``."""
    return sum(sz for f, (ino, sz) in after.items() if before.get(f) != (ino, sz))


def _writer(d: Path) -> Any:
    """A CacheWriter that never compacts on its own (the benchmark decides when)."""
    import simx.cache.merge as policy  # where the writer reads COMPACT_SEGMENTS
    from simx.cache import CacheWriter
    from tiny_model import tiny_spec

    policy.COMPACT_SEGMENTS = 1 << 30  # benchmark-only: let the segments pile up
    return CacheWriter(d, tiny_spec(dim=DIM), compact_dead=1.0)


def build(d: Path, rows: int, segments: int, dead: float) -> dict[str, Any]:
    import numpy as np

    from simx.cache import Row

    rng = np.random.default_rng(0)
    t = time.perf_counter()
    bounds = np.linspace(0, rows, segments + 1).astype(int)
    with _writer(d) as w:
        for a, b in zip(bounds[:-1], bounds[1:]):
            w.add([Row(_path(i), 1000 + i, 10**18 + i) for i in range(a, b)],
                  rng.standard_normal((b - a, DIM), dtype=np.float32))
            w.commit()
        n_dead = int(round(dead * rows))
        if n_dead:
            w.remove([_path(int(i)) for i in rng.choice(rows, n_dead, replace=False)])
            w.commit()
    return {"seconds": time.perf_counter() - t, "dead_rows": n_dead,
            "bytes_on_disk": sum(sz for _, sz in _files(d).values()),
            "manifest_bytes": (d / "cache.json").stat().st_size, "peak_rss_mb": peak_rss_mb()}


def read(d: Path) -> dict[str, Any]:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    import simx

    # pyarrow's first read in a process costs ~0.5 s of one-off set-up: paid here, timed
    # apart, so open_s is what the segments cost.
    t = time.perf_counter()
    tiny = d.parent / f"warmup_{os.getpid()}.parquet"
    pq.write_table(pa.table({"a": pa.array([1], pa.int64())}), str(tiny))
    pq.read_table(str(tiny))
    tiny.unlink()
    out: dict[str, Any] = {"pyarrow_first_use_s": time.perf_counter() - t}
    t = time.perf_counter()
    fc = simx.FeatureCache(d)
    out |= {"open_s": time.perf_counter() - t, "live_rows": len(fc.paths),
            "open_rss_mb": peak_rss_mb()}
    rng = np.random.default_rng(1)
    idx = np.sort(rng.choice(len(fc.paths), GATHER, replace=False))
    t = time.perf_counter()
    g = np.asarray(fc.embeddings[idx])
    out["gather_1k_s"] = time.perf_counter() - t
    t = time.perf_counter()
    v = np.stack([fc.vector(fc.paths[i]) for i in rng.permutation(idx)])
    out["vector_1k_s"] = time.perf_counter() - t
    # np.asarray of a compacted cache is the memmap itself (no read at all); a segmented
    # one is gathered into RAM. read_all_s is both brought into RAM, so they compare.
    t = time.perf_counter()
    a = np.asarray(fc.embeddings)
    out["asarray_s"] = time.perf_counter() - t
    out["asarray_is_memmap"] = isinstance(a, np.memmap) or not a.flags.owndata
    if out["asarray_is_memmap"]:
        a = np.array(a)
    out["read_all_s"] = time.perf_counter() - t
    assert a.shape == (len(fc.paths), DIM) and np.array_equal(a[idx], g), "gather != full read"
    assert v.shape == (GATHER, DIM)
    out["read_all_mb_per_s"] = a.nbytes / 1e6 / out["read_all_s"]
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def add1(d: Path) -> dict[str, Any]:
    import numpy as np

    from simx.cache import Row

    before = _files(d)
    t = time.perf_counter()
    with _writer(d) as w:
        w.add([Row("/fake/zz_new.png", 1, 10**18)], np.ones((1, DIM), np.float32))
        w.commit()
    secs = time.perf_counter() - t
    return {"seconds": secs, "bytes_written": _written(before, _files(d)),
            "manifest_bytes": (d / "cache.json").stat().st_size, "peak_rss_mb": peak_rss_mb()}


def compact(d: Path) -> dict[str, Any]:
    before = _files(d)
    t = time.perf_counter()
    with _writer(d) as w:
        w.compact()
    secs = time.perf_counter() - t
    after = _files(d)
    return {"seconds": secs, "bytes_written": _written(before, after),
            "bytes_before": sum(sz for _, sz in before.values()),
            "bytes_after": sum(sz for _, sz in after.values()),
            "segments_after": len(list((d / "img_emb").glob("*.npy"))), "peak_rss_mb": peak_rss_mb()}


def _sub(step: str, d: Path, *extra: str) -> dict[str, Any]:
    r = subprocess.run([sys.executable, __file__, "--step", step, str(d), *extra],
                       check=True, capture_output=True, text=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def run_case(tmp: Path, rows: int, segments: int, dead: float, reads: int) -> dict[str, Any]:
    d = tmp / f"c_{segments}_{dead}"
    shutil.rmtree(d, ignore_errors=True)
    case: dict[str, Any] = {"segments": segments, "dead_fraction": dead,
                            "loadavg_before": os.getloadavg()[0]}
    case["build"] = _sub("build", d, str(rows), str(segments), str(dead))
    case["read"] = [_sub("read", d) for _ in range(reads)]
    case["add1"] = _sub("add1", d)
    case["compact"] = _sub("compact", d)
    case["read_compacted"] = [_sub("read", d) for _ in range(reads)]
    case["loadavg_after"] = os.getloadavg()[0]
    shutil.rmtree(d)
    return case


def _mean(xs: list[dict[str, Any]], k: str) -> float:
    return sum(x[k] for x in xs) / len(xs)


def _row(c: dict[str, Any]) -> str:
    r, rc, k, a = c["read"], c["read_compacted"], c["compact"], c["add1"]
    both = lambda xs, key, f: " / ".join(f.format(x[key]) for x in xs)  # noqa: E731
    return (f"| {c['segments']} | {c['dead_fraction']:.0%} | {r[0]['live_rows']:,} | "
            f"{both(r, 'open_s', '{:.2f}')} | {both(rc, 'open_s', '{:.2f}')} | "
            f"{both(r, 'read_all_s', '{:.2f}')} | {both(rc, 'read_all_s', '{:.2f}')} | "
            f"{both(r, 'gather_1k_s', '{:.3f}')} | {both(rc, 'gather_1k_s', '{:.3f}')} | "
            f"{both(r, 'vector_1k_s', '{:.3f}')} | {both(r, 'peak_rss_mb', '{:.0f}')} | "
            f"{a['seconds']:.2f} ({a['manifest_bytes']:,} B manifest) | "
            f"{k['seconds']:.1f} | {k['bytes_written'] / 1e6:.0f} | {k['peak_rss_mb']:.0f} | "
            f"{c['loadavg_before']:.1f}→{c['loadavg_after']:.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=200_000, help="stored rows per cache")
    ap.add_argument("--dead", default="0,0.1,0.25,0.5,0.75", help="dead fractions to try")
    ap.add_argument("--dead-segments", type=int, default=16, help="segments in the dead sweep")
    ap.add_argument("--segments", default="1,16,128,512,2048", help="segment counts to try")
    ap.add_argument("--reads", type=int, default=2, help="read subprocesses per cache state")
    ap.add_argument("--out", type=Path, required=True, help="the .md to write (and a .json beside)")
    args = ap.parse_args()
    facts = machine_facts()
    jobs = [(args.dead_segments, float(f)) for f in args.dead.split(",")]
    jobs += [(int(s), 0.0) for s in args.segments.split(",")
             if (int(s), 0.0) not in jobs]
    cases = []
    with tempfile.TemporaryDirectory(prefix="simx_compact_") as tmp:
        for segments, dead in jobs:
            c = run_case(Path(tmp), args.rows, segments, dead, args.reads)
            print(json.dumps(c), flush=True)
            cases.append(c)
    facts["loadavg_after"] = list(os.getloadavg())
    res = {"machine": facts, "rows": args.rows, "dim": DIM, "cases": cases}
    args.out.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")
    head = ("| segments | dead | live rows | open s | open s (compacted) | read all s | "
            "read all s (compacted) | gather 1k s | gather 1k s (compacted) | 1k vector() s | "
            "reader peak RSS MB | add 1 row + commit s | compact s | compact MB written | "
            "compact peak RSS MB | load avg |")
    lines = [f"# Compaction: dead rows and segments against reads, {args.rows:,} stored rows × {DIM}",
             "", *machine_block(facts), "",
             "Measured by `benchmarks/compaction.py` (stand-in: random float32 rows through "
             "CacheWriter, no model). Each read figure is a fresh subprocess, warm page cache; "
             "two reads per state, both shown (a / b). 'compacted' is the same cache after "
             "`CacheWriter.compact()` (one segment, the same live rows). open s excludes pyarrow's "
             "one-off first use in a process (~0.5 s, in the .json). read all s = every live row "
             "brought into RAM: `np.asarray(fc.embeddings)` (a gather across segments), plus a "
             "copy where that returned the compacted cache's memmap itself (which costs nothing "
             "until touched).", "",
             head, "|" + "---|" * (head.count("|") - 1)]
    lines += [_row(c) for c in cases]
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--step":
        step, d = sys.argv[2], Path(sys.argv[3])
        if step == "build":
            out = build(d, int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6]))
        else:
            out = {"read": read, "add1": add1, "compact": compact}[step](d)
        print(json.dumps(out))
    else:
        main()
