"""Reading a model's spec: the header reader (simx.model.header, off the protobuf wire
format) against what simx did before, an onnxruntime session with graph optimisation off.

Every ``simx info``, ``simx models --exported``, automatic choice (it reads the file and
its int8/fp16 siblings) and session set-up reads the spec first, so its cost is paid on
every command. Each case runs in a fresh subprocess (cold imports, cold session), the two
methods alternating, ``--repeats`` times; the page cache is warm (the file was read once
before), as it is for the second command on a file.

    python benchmarks/read_spec.py MODEL.onnx [MODEL.onnx ...] [--repeats 5] [--out NAME]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_block, machine_facts  # noqa: E402

OLD = """
import time, json, sys
t0 = time.perf_counter()
import onnxruntime as ort
from simx.model.spec import read_spec_from_metadata
so = ort.SessionOptions(); so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
s = ort.InferenceSession(sys.argv[1], sess_options=so, providers=["CPUExecutionProvider"])
spec = read_spec_from_metadata(s.get_modelmeta().custom_metadata_map)
t1 = time.perf_counter()
rss = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")][0] / 1024
print(json.dumps({"s": t1 - t0, "dim": spec.dim, "rss_mb": rss}))
"""
NEW = """
import time, json, sys
t0 = time.perf_counter()
from simx.model.header import read_spec
spec = read_spec(sys.argv[1])
t1 = time.perf_counter()
rss = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")][0] / 1024
print(json.dumps({"s": t1 - t0, "dim": spec.dim, "rss_mb": rss}))
"""


def _once(code: str, model: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", code, str(model)], capture_output=True, text=True,
                         check=True, timeout=600).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=None, help="write benchmarks/results/<OUT>.{json,md}")
    args = ap.parse_args(argv)
    facts = machine_facts()
    rows = []
    for model in args.models:
        model.read_bytes()  # warm the page cache for both methods alike
        runs: dict[str, list[dict]] = {"onnxruntime session": [], "header (simx.model.header)": []}
        for _ in range(args.repeats):
            runs["onnxruntime session"].append(_once(OLD, model))
            runs["header (simx.model.header)"].append(_once(NEW, model))
        for method, rs in runs.items():
            rows.append({"model": model.name, "mb": round(model.stat().st_size / 2**20, 1),
                         "method": method, "median_ms": round(1000 * statistics.median(r["s"] for r in rs), 1),
                         "runs_ms": [round(1000 * r["s"], 1) for r in rs],
                         "peak_rss_mb": round(max(r["rss_mb"] for r in rs), 1)})
            print(rows[-1])
    if args.out:
        res = Path(__file__).resolve().parent / "results"
        (res / f"{args.out}.json").write_text(json.dumps({"machine": facts, "rows": rows}, indent=2) + "\n")
        lines = ["# Reading a model's spec: header reader vs an onnxruntime session", "",
                 *machine_block(facts), "",
                 f"Each figure: a fresh subprocess, imports included (the session path imports onnxruntime; the header path never needs it), {args.repeats} runs alternating "
                 "the two methods, page cache warm. Ratio = session / header, from the same run.", "",
                 "| model | MB | method | median ms | runs ms | peak RSS MB |", "|---|---:|---|---:|---|---:|"]
        for r in rows:
            lines.append(f"| {r['model']} | {r['mb']} | {r['method']} | {r['median_ms']} | "
                         f"{', '.join(map(str, r['runs_ms']))} | {r['peak_rss_mb']} |")
        lines.append("")
        for i in range(0, len(rows), 2):
            a, b = rows[i], rows[i + 1]
            lines.append(f"- {a['model']}: the header reader is {a['median_ms'] / b['median_ms']:.1f}x "
                         f"faster and peaks at {b['peak_rss_mb']} MB vs {a['peak_rss_mb']} MB.")
        (res / f"{args.out}.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
