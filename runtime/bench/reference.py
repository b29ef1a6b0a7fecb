"""Same-run compute references for the benchmark: numpy's float32 matmul rate (sgemm), a
MatMul graph in the model's own precision through its own provider, and the cold-start
cost of importing simx.

On shared, noisy hosts even the same machine gives different raw figures from one minute
to the next, so a benchmark divides the model's achieved GFLOP/s by the sgemm rate
measured in the same run: that cancels out the machine's speed and much of its load.

Why a second, same-precision reference: numpy's fp32 sgemm says how far an fp32 model is
from the CPU's fp32 peak, but a bf16 model through OpenVINO runs on other units
(AVX512-BF16 / AMX), several times faster than sgemm; dividing its GFLOP/s by sgemm would
report >100% "efficiency" and hide a slow path. So ``simx bench`` also times one n x n
MatMul graph (built with onnx.helper) through the session builder with the model's
provider and precision, and reports the model's GFLOP/s against that.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from simx.core.errors import SimxError, first_line

#: Matrix size of the same-precision reference GEMM.
DEFAULT_N = 1024


def sgemm_gflops(n: int = 2048, repeats: int = 5) -> dict[str, Any]:
    """numpy's float32 n x n matmul rate: ``repeats`` timed runs after one warm-up.

    numpy's BLAS uses every core it is allowed (unless OPENBLAS_NUM_THREADS or the like
    says otherwise; that is recorded in ``machine_facts``). That is deliberate: the
    reference is what the whole machine can do, so a model run limited to fewer threads
    shows up as lower efficiency instead of being normalised away.
    ``gflops`` is the best run (interference only ever slows a run); every sample is
    returned too, for callers that want a typical figure under the current load.
    """
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), dtype=np.float32)
    np.matmul(a, b, out=out)  # warm-up: thread pool start, page faults
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        np.matmul(a, b, out=out)
        times.append(time.perf_counter() - t0)
    flop = 2.0 * n * n * n
    rates = [flop / t / 1e9 for t in times]
    return {"n": n, "repeats": len(times), "gflops": max(rates), "gflops_samples": rates}


def matmul_graph(path: Path, n: int, fp16: bool = False) -> Path:
    """Write Y = A @ B with A an [n, n] input and B an [n, n] constant, to ``path``."""
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:  # onnx is in the export and test extras, not the runtime's
        raise SimxError("the same-precision reference GEMM needs the onnx package "
                        "(pip install onnx)") from None
    dt = np.float16 if fp16 else np.float32
    et = TensorProto.FLOAT16 if fp16 else TensorProto.FLOAT
    b = (np.random.default_rng(0).standard_normal((n, n)) / np.sqrt(n)).astype(dt)
    g = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["y"])], "simx_ref_gemm",
                          [helper.make_tensor_value_info("a", et, [n, n])],
                          [helper.make_tensor_value_info("y", et, [n, n])],
                          initializer=[numpy_helper.from_array(b, "b")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


def gemm_gflops(provider: str, precision: str, threads: int | None = None, n: int = DEFAULT_N,
                repeats: int = 5, device_id: int = 0) -> dict[str, Any]:
    """GFLOP/s of one n x n MatMul through ``provider`` at ``precision`` (best of ``repeats``
    calls after a warm-up), or ``{"gflops": None, "error": ...}`` where it cannot run."""
    from simx.run.session import open_graph

    kind = f"one {n}x{n} MatMul graph through {provider} at {precision}"
    fp16_graph = precision == "fp16" and provider != "tensorrt"  # TensorRT converts itself
    run_precision = "fp32" if fp16_graph else precision
    try:
        with tempfile.TemporaryDirectory(prefix="simx-gemm-") as d:
            path = matmul_graph(Path(d) / "gemm.onnx", n, fp16=fp16_graph)
            sess, ran = open_graph(path, provider, run_precision, threads, device_id)
            a = np.random.default_rng(1).standard_normal((n, n)).astype(
                np.float16 if fp16_graph else np.float32)
            sess.run(["y"], {"a": a})
            best = float("inf")
            for _ in range(max(1, repeats)):
                t0 = time.perf_counter()
                sess.run(["y"], {"a": a})
                best = min(best, time.perf_counter() - t0)
    except SimxError as e:
        return {"kind": kind, "n": n, "gflops": None, "error": first_line(e)}
    return {"kind": kind, "n": n, "precision": "fp16" if fp16_graph else ran,
            "provider": provider, "gflops": 2 * n**3 / best / 1e9}


_COLD_START = (
    "import time, sys, json\n"
    "t0 = time.perf_counter()\n"
    "import simx\n"
    "t1 = time.perf_counter()\n"
    "import simx.run.session, onnxruntime\n"
    "try:\n"
    "    import simx.run.encoder\n"
    "except ImportError:\n"
    "    pass\n"
    "t2 = time.perf_counter()\n"
    "print(json.dumps({'import_simx_s': t1 - t0, 'import_runtime_s': t2 - t0,\n"
    "                  'torch_loaded': 'torch' in sys.modules}))\n"
)


def cold_start(python: str | None = None) -> dict[str, float | bool | None]:
    """Import times in a fresh interpreter, as a short-lived job pays them.

    ``import_simx_s`` is ``import simx`` alone (cheap by design: heavy names load lazily);
    ``import_runtime_s`` adds what running a model needs (simx.run.session + onnxruntime,
    and simx.run.encoder with OpenCV where it exists). Also reports whether torch got loaded,
    which must never happen in the runtime.
    """
    try:
        out = subprocess.run(
            [python or sys.executable, "-c", _COLD_START],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
        return json.loads(out.strip().splitlines()[-1])
    except (subprocess.SubprocessError, OSError, ValueError, IndexError):
        return {"import_simx_s": None, "import_runtime_s": None, "torch_loaded": None}
