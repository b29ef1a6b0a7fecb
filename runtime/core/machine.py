"""Machine facts: the CPU, its usable cores, the load average and the library versions.

A throughput figure means little without the machine it came from, so every benchmark
and every automatic choice records what it ran on.
"""

from __future__ import annotations

import os
import platform
import socket
from datetime import datetime, timezone
from typing import Any

import numpy as np
from simx.core.version import __version__ as simx_version, package_version

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
        "opencv": package_version("opencv-python-headless") or package_version("opencv-python"),
        "simx": simx_version,
        "thread_env": {k: os.environ[k] for k in _THREAD_ENV if k in os.environ},
        "load_average_1_5_15": load,
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }




