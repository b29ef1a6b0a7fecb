"""The reference GEMM in the precision a model really runs at, through the same provider.

Why: numpy's fp32 sgemm says how far an fp32 model is from the CPU's fp32 peak, but a
bf16 model through OpenVINO runs on other units (AVX512-BF16 / AMX), several times
faster than sgemm; dividing its GFLOP/s by sgemm would report >100% "efficiency" and
hide a slow path. So ``simx bench`` also times one n x n MatMul graph (built with
onnx.helper) through the session builder with the model's provider and precision, and
reports the model's GFLOP/s against that.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from simx.core.errors import SimxError, first_line

DEFAULT_N = 1024


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
