"""benchmarks/gpu_check.sh: the prepared GPU check parses and runs its CPU dry run.

No GPU is lent here, so the dry run is the test: the same flow (simx import shim, provider
check, torch peer, onnxruntime path, parity against CPU fp32, JSON, skip reasons) with the
CPU standing in for the GPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def test_gpu_check_parses():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_gpu_check_dry_run_writes_its_json(exported, tmp_path):
    models_dir = exported["dinov2-small"].parent
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path)}
    p = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--models-dir", str(models_dir),
                        "--models", "dinov2-small"], env=env, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "skipped gpu: dry run" in p.stdout
    got = json.loads((tmp_path / "gpu_check.json").read_text())
    assert got["dry_run"] is True and got["batch_sizes"] == [1, 2]
    assert "gpu" in got["skipped"]
    (m,) = got["models"]
    assert m["id"] == "dinov2-small"
    assert set(m["paths"]) == {"torch_fp32", "torch_bf16_autocast", "ort_cpu_fp32_standin"}
    for path in m["paths"].values():
        assert set(path["batches"]) == {"1", "2"}
        assert all(r["img_s"] > 0 and r["calls"] >= 3 for r in path["batches"].values())
    # parity against onnxruntime CPU fp32: torch fp32 is the file's own reference
    assert m["paths"]["torch_fp32"]["min_cosine_vs_cpu_fp32"] >= 0.99999
    assert m["paths"]["ort_cpu_fp32_standin"]["min_cosine_vs_cpu_fp32"] >= 0.999999
    assert m["paths"]["torch_bf16_autocast"]["min_cosine_vs_cpu_fp32"] >= 0.99


def test_gpu_check_refuses_unknown_options(tmp_path):
    p = subprocess.run(["bash", str(SCRIPT), "--bogus"], capture_output=True, text=True,
                       env={**os.environ, "OUT": str(tmp_path)})
    assert p.returncode == 2 and "unknown option --bogus" in p.stderr
