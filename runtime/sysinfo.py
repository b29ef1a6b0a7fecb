"""Machine facts and a same-run compute reference for the benchmark.

A throughput figure means little without the machine it came from, and on shared,
noisy hosts even the same machine gives different raw figures from one minute to
the next. So every benchmark records what it ran on, and measures numpy's float32
matrix-multiply rate (sgemm) in the same run: dividing the model's achieved GFLOP/s
by it cancels out the machine's speed and much of its current load.
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from typing import Any

import numpy as np

# The environment variables that change how many threads BLAS/OpenMP libraries use.
_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def cpu_model() -> str:
    """The CPU's marketing name (Linux /proc/cpuinfo, else platform)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def physical_cores() -> int | None:
    """Distinct (physical id, core id) pairs on Linux; None where that cannot be read."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return None
    cores: set[tuple[str, str]] = set()
    phys = core = ""
    for line in text.splitlines() + [""]:
        if not line.strip():
            if core:
                cores.add((phys, core))
            phys = core = ""
        elif line.startswith("physical id"):
            phys = line.split(":", 1)[1].strip()
        elif line.startswith("core id"):
            core = line.split(":", 1)[1].strip()
    return len(cores) or None


def usable_cores() -> int:
    """Cores this process may run on (CPU affinity / container limits), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return None


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages: how busy the machine was (None off Unix)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def machine_facts() -> dict[str, Any]:
    """Everything needed to judge whether two benchmark runs are comparable."""
    load = load_average()
    try:
        import onnxruntime as ort

        ort_version = ort.__version__
        ort_providers = list(ort.get_available_providers())
    except ImportError:
        ort_version, ort_providers = None, []
    from . import __version__ as simx_version

    return {
        "hostname": socket.gethostname(),
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "physical_cores": physical_cores(),
        "usable_cores": usable_cores(),
        "machine": platform.machine(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnxruntime": ort_version,
        "onnxruntime_providers_available": ort_providers,
        "opencv": _version("opencv-python-headless") or _version("opencv-python"),
        "simx": simx_version,
        "thread_env": {k: os.environ[k] for k in _THREAD_ENV if k in os.environ},
        "load_average_1_5_15": load,
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


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
        "import simx.session, onnxruntime\n"
        "try:\n"
        "    import simx.encoder\n"
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
