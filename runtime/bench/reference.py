"""Same-run compute references for the benchmark: numpy's float32 matmul rate (sgemm), and
the cold-start cost of importing simx.

On shared, noisy hosts even the same machine gives different raw figures from one minute
to the next, so a benchmark divides the model's achieved GFLOP/s by the sgemm rate
measured in the same run: that cancels out the machine's speed and much of its load.
"""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import numpy as np

# The environment variables that change how many threads BLAS/OpenMP libraries use.














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


def cold_start(python: str | None = None) -> dict[str, float | bool | None]:
    """Import times in a fresh interpreter, as a short-lived job pays them.

    ``import_simx_s`` is ``import simx`` alone (cheap by design: heavy names load lazily);
    ``import_runtime_s`` adds what running a model needs (simx.session + onnxruntime,
    and simx.encoder with OpenCV where it exists). Also reports whether torch got loaded,
    which must never happen in the runtime.
    """
    code = (
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
    try:
        out = subprocess.run(
            [python or sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
        import json

        return json.loads(out.strip().splitlines()[-1])
    except (subprocess.SubprocessError, OSError, ValueError, IndexError):
        return {"import_simx_s": None, "import_runtime_s": None, "torch_loaded": None}
