"""The machine a benchmark ran on, for its .json and the header of its .md.

simx.core.machine.machine_facts gives the CPU, cores and library versions; this adds the ISA
flags from /proc/cpuinfo that decide onnxruntime's and numpy's kernels, and writes the
lines every results file opens with (load average before and after: the machine is shared).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from simx.core.machine import machine_facts as _facts

ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
             "avx512_bf16", "avx_vnni", "amx_bf16", "amx_int8")


def isa_flags() -> list[str]:
    """The flags among ISA_FLAGS this CPU has, as /proc/cpuinfo lists them."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [f for f in ISA_FLAGS if f in have]
    except OSError:
        pass
    return []


def peak_rss_mb() -> float:
    """This process's peak RSS in MB: VmHWM, which starts afresh at exec.

    Not ru_maxrss: on Linux a child's ru_maxrss starts at its parent's RSS at fork (an 800
    MB parent gives a 13 MB child a ru_maxrss of 813 MB, measured here), so a benchmark
    that runs each case in a subprocess would report the driver's memory as the case's.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource  # not Linux: the best there is

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine_facts() -> dict[str, Any]:
    """simx.core.machine's facts plus the ISA flags (its load average is the one *before*)."""
    return {**_facts(), "isa_flags": isa_flags()}


def machine_block(facts: dict[str, Any]) -> list[str]:
    """Markdown lines naming the machine and how loaded it was before and after."""
    after = facts.get("loadavg_after") or [round(x, 2) for x in os.getloadavg()]
    return [
        f"Machine (measured): {facts['cpu_model']}, {facts['usable_cores']} usable cores "
        f"({facts['physical_cores']} physical), ISA flags: {', '.join(facts['isa_flags'])}; "
        f"onnxruntime {facts['onnxruntime']}, numpy {facts['numpy']}, python {facts['python']}.",
        f"Load average (1/5/15 min) before: {facts['load_average_1_5_15']}, after: "
        f"{[round(x, 2) for x in after]}. **The machine was shared with other jobs** (the lead's "
        "and other helpers' work on the same 2 cores), so every time here is noisy; runs are "
        "repeated and each is reported.",
    ]
