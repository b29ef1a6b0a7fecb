"""Row metadata as parquet (pyarrow) or jsonl (the json module): seconds, bytes, peak RSS.

Issue 10 lets the cache keep its row-aligned metadata as jsonl if parquet does not pay
for its dependency. This measures both on the same rows: N rows of (path ~60 chars,
size, mtime_ns, ctime_ns, ino), the fields a simx cache stores per row.

- parquet: a pyarrow table of the five columns, ``zstd`` (what runtime/cache/tables.py writes),
  read back with ``pq.read_table``;
- jsonl: one ``json.dumps`` object a line, read back with ``json.loads`` per line.

Reads are measured two ways: into Python ``Row``-like tuples (what a writer that keeps a
path -> Row dict needs) and into columns (arrow/numpy for parquet; for jsonl there is no
columnar shortcut, so the same parse then one list per field). Every case runs in a fresh
subprocess, so its peak RSS (VmHWM) is that case's own; ``baseline`` is the subprocess that only
builds the rows (the write cases include it). Each case runs ``--repeat`` times, the
cases interleaved, and every run is reported.

    python benchmarks/metadata_format.py --rows 1000000 --repeat 2 \\
        --out benchmarks/results/metadata_format_<machine>.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import machine_block, machine_facts, peak_rss_mb  # noqa: E402

FIELDS = ("path", "size", "mtime_ns", "ctime_ns", "ino")
CASES = ("baseline", "parquet_write", "jsonl_write", "parquet_read_rows", "jsonl_read_rows",
         "parquet_read_columns", "jsonl_read_columns")


def make_rows(n: int) -> list[tuple[str, int, int, int, int]]:
    """``n`` rows shaped like a photo collection: ~60-char paths with a random part (so
    the compressor sees realistic entropy, not a counter), camera-like sizes and times."""
    import numpy as np

    rng = np.random.default_rng(0)
    tags = rng.integers(0, 16**8, n)
    sizes = rng.integers(50_000, 12_000_000, n)
    mtimes = 1_600_000_000_000_000_000 + rng.integers(0, 10**17, n)
    inos = rng.integers(10**6, 10**9, n)
    return [(f"/mnt/photos/{2015 + i % 10}/album_{i // 1000:05d}/IMG_{i:08d}_{int(t):08x}.jpg",
             int(s), int(m), int(m) + 1234, int(o))
            for i, (t, s, m, o) in enumerate(zip(tags.tolist(), sizes.tolist(),
                                                 mtimes.tolist(), inos.tolist()))]


def _case(case: str, path: Path, n: int) -> dict[str, Any]:
    """One measurement, in this (fresh) process; imports are timed apart (``import_s``)."""
    out: dict[str, Any] = {"case": case}
    t = time.perf_counter()
    if case.startswith("parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        out["import_s"] = time.perf_counter() - t
        # pyarrow's first write/read in a process costs ~0.5 s of one-off set-up (measured
        # here): timed apart as first_use_s, since a long-lived process pays it once.
        t = time.perf_counter()
        tiny = path.with_name(f"warmup_{os.getpid()}.parquet")
        pq.write_table(pa.table({"a": pa.array([1], pa.int64())}), str(tiny), compression="zstd")
        pq.read_table(str(tiny))
        tiny.unlink()
        out["first_use_s"] = time.perf_counter() - t
    else:
        out["import_s"] = out["first_use_s"] = 0.0
    if case.endswith("_write") or case == "baseline":
        t = time.perf_counter()
        rows = make_rows(n)
        out["build_rows_s"] = time.perf_counter() - t
        t = time.perf_counter()
        if case == "parquet_write":
            cols = list(zip(*rows))
            table = pa.table({"path": pa.array(cols[0], pa.string()),
                              **{f: pa.array(c, pa.int64()) for f, c in zip(FIELDS[1:], cols[1:])}})
            pq.write_table(table, str(path), compression="zstd")
        elif case == "jsonl_write":
            with open(path, "w", encoding="utf-8") as f:
                f.write("".join(json.dumps(dict(zip(FIELDS, r)), ensure_ascii=False) + "\n"
                                for r in rows))
        if case != "baseline":
            fd = os.open(path, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
            out["bytes"] = path.stat().st_size
        out["seconds"] = time.perf_counter() - t
        out["rows"] = len(rows)
    else:
        t = time.perf_counter()
        if case.startswith("parquet"):
            table = pq.read_table(str(path))
            if case.endswith("rows"):
                got: Any = list(zip(*(table.column(f).to_pylist() for f in FIELDS)))
            else:
                got = {f: (table.column(f).to_numpy() if f != "path" else table.column(f))
                       for f in FIELDS}
        else:
            with open(path, encoding="utf-8") as f:
                objs = [json.loads(line) for line in f]
            if case.endswith("rows"):
                got = [tuple(o[k] for k in FIELDS) for o in objs]
            else:
                got = {k: [o[k] for o in objs] for k in FIELDS}
        out["seconds"] = time.perf_counter() - t
        if isinstance(got, list):
            out["rows"], ends = len(got), [list(got[0]), list(got[-1])]
        else:
            def item(k: str, j: int) -> Any:
                v = got[k][j]
                if hasattr(v, "as_py"):  # an arrow scalar (parquet's path column)
                    return v.as_py()
                return v if isinstance(v, (str, int)) else int(v)  # numpy ints -> int
            out["rows"] = len(got["size"])
            ends = [[item(k, j) for k in FIELDS] for j in (0, -1)]
        out["first_last"] = ends  # checked against the written rows by the parent
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def _run(case: str, path: Path, n: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--case", case, str(path), str(n)]
    r = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def _table(runs: list[dict[str, Any]]) -> list[str]:
    lines = ["| case | run | seconds | import s | first-use s | peak RSS MB | bytes on disk |",
             "|---|---|---|---|---|---|---|"]
    for r in runs:
        b = r.get("bytes")
        secs = r.get("build_rows_s", 0.0) if r["case"] == "baseline" else r["seconds"]
        lines.append(f"| {r['case']} | {r['run']} | {secs:.2f} | {r['import_s']:.2f} | {r['first_use_s']:.2f} | "
                     f"{r['peak_rss_mb']:.0f} | {'' if b is None else f'{b:,}'} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True, help="the .md to write (and a .json beside)")
    args = ap.parse_args()
    facts = machine_facts()
    runs: list[dict[str, Any]] = []
    written = make_rows(args.rows)
    want = [list(written[0]), list(written[-1])]
    del written
    with tempfile.TemporaryDirectory(prefix="simx_mf_") as tmp:
        files = {"parquet": Path(tmp, "metadata_0.parquet"), "jsonl": Path(tmp, "metadata_0.jsonl")}
        for rep in range(1, args.repeat + 1):
            for case in CASES:
                fmt = case.split("_")[0]
                r = _run(case, files.get(fmt, Path(tmp, "none")), args.rows)
                r["run"] = rep
                if "first_last" in r:  # a read must give back the rows that were written
                    assert r.pop("first_last") == want and r["rows"] == args.rows, (case, r)
                r["loadavg_after"] = os.getloadavg()[0]
                print(json.dumps(r), flush=True)
                runs.append(r)
    facts["loadavg_after"] = list(os.getloadavg())
    res = {"machine": facts, "rows": args.rows, "runs": runs}
    args.out.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")
    render(res, args.out)


def _summary(runs: list[dict[str, Any]]) -> list[str]:
    """parquet against jsonl per operation: mean seconds over the runs, and the ratio."""
    def mean(case: str, key: str = "seconds") -> float:
        xs = [r[key] for r in runs if r["case"] == case]
        return sum(xs) / len(xs)

    lines = ["| operation | parquet s (mean) | jsonl s (mean) | jsonl / parquet | "
             "parquet peak RSS MB | jsonl peak RSS MB |", "|---|---|---|---|---|---|"]
    for op in ("write", "read_rows", "read_columns"):
        pq_s, js_s = mean(f"parquet_{op}"), mean(f"jsonl_{op}")
        lines.append(f"| {op} | {pq_s:.2f} | {js_s:.2f} | {js_s / pq_s:.1f}x | "
                     f"{mean(f'parquet_{op}', 'peak_rss_mb'):.0f} | "
                     f"{mean(f'jsonl_{op}', 'peak_rss_mb'):.0f} |")
    pb = next(r["bytes"] for r in runs if r["case"] == "parquet_write")
    jb = next(r["bytes"] for r in runs if r["case"] == "jsonl_write")
    lines += ["", f"On disk: parquet {pb:,} B ({pb / 1e6:.1f} MB), jsonl {jb:,} B "
              f"({jb / 1e6:.1f} MB): jsonl is {jb / pb:.1f}x larger."]
    return lines


def render(res: dict[str, Any], out: Path) -> None:
    """The .md: machine, summary, every run."""
    facts, runs = res["machine"], res["runs"]
    lines = [f"# Row metadata: parquet vs jsonl, {res['rows']:,} rows", "",
             *machine_block(facts), "",
             "Rows: (path ~60 chars with a random hex part, size, mtime_ns, ctime_ns, ino). "
             "parquet = pyarrow, zstd; jsonl = json module. Fresh subprocess per case; peak RSS "
             "is VmHWM of that subprocess (write cases include building the rows: compare "
             "with `baseline`). `seconds` excludes the import and pyarrow's one-off first use "
             "in a process (both in their own columns). Written by "
             "`benchmarks/metadata_format.py`.", "", "## Summary (measured)", "",
             *_summary(runs), "", "## Every run", "", *_table(runs), ""]
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--case":
        print(json.dumps(_case(sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]))))
    elif len(sys.argv) > 1 and sys.argv[1] == "--render":  # the .md again from a .json
        render(json.loads(Path(sys.argv[2]).read_text()), Path(sys.argv[2]).with_suffix(".md"))
    else:
        main()
