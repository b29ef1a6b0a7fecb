"""Timing for ``simx bench``: seconds per call, latency percentiles, and the interleaving of
the model with its same-run sgemm reference.

Warm-up calls are excluded and latencies are per batch, so p50/p90/p99 say what one call
costs; the first call's graph and allocator warm-up is reported as cold start instead.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Sequence

import numpy as np

from simx.bench.reference import sgemm_gflops

#: Timed sgemm calls per round (best of), after one warm-up.
SGEMM_REPEATS = 2


def time_calls(
    call: Callable[[], Any], seconds: float, warmup: int, min_calls: int = 3
) -> list[float]:
    """Seconds per call, after ``warmup`` untimed calls, until ``seconds`` have passed."""
    for _ in range(max(0, warmup)):
        call()
    lat: list[float] = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        call()
        t1 = time.perf_counter()
        lat.append(t1 - t0)
        if t1 - start >= seconds and len(lat) >= min_calls:
            return lat


def latency_ms(lat: Sequence[float]) -> dict[str, float]:
    a = np.asarray(lat) * 1e3
    return {
        "p50": float(np.percentile(a, 50)),
        "p90": float(np.percentile(a, 90)),
        "p99": float(np.percentile(a, 99)),
        "mean": float(a.mean()),
    }


def interleaved(
    call: Callable[[], Any],
    batch: int,
    *,
    seconds: float,
    rounds: int,
    warmup: int,
    sgemm_n: int,
    sgemm_log: list[dict[str, Any]],
    stream: Callable[[int, int], None] | None = None,
) -> tuple[list[float], list[dict[str, float]]]:
    """Alternate a short sgemm measurement with a slice of model calls, ``rounds`` times.

    Returns every call's latency and, per round, the model's img/s and the sgemm GFLOP/s
    measured just before it (each sgemm measurement is appended to ``sgemm_log``). Load on
    a shared machine changes over seconds; pairing each slice with its own reference keeps
    the ratio honest when it does. With ``stream`` (``stream(round, n)`` embeds n files end
    to end), each round also times that many images through the real pipeline, about as
    long as the model slice took.
    """
    for _ in range(max(0, warmup)):
        call()
    lat: list[float] = []
    out: list[dict[str, float]] = []
    n = max(1, rounds)
    for r in range(n):
        sg = sgemm_gflops(sgemm_n, repeats=SGEMM_REPEATS)
        sgemm_log.append(sg)
        time.sleep(0.15)  # OpenBLAS workers spin ~0.1 s after a call; let them go idle
        part = time_calls(call, seconds / n, warmup=0, min_calls=1)
        lat += part
        rnd = {"sgemm_gflops": sg["gflops"], "img_s": batch * len(part) / sum(part)}
        if stream is not None:
            rnd["e2e_images"], rnd["e2e_s"] = stream_for(stream, r, batch, rnd["img_s"], seconds / n)
        out.append(rnd)
    return lat, out


def stream_for(stream: Callable[[int, int], None], r: int, batch: int, img_s: float,
               budget: float) -> tuple[int, float]:
    """Embed files end to end in chunks until ``budget`` seconds have passed (at least one
    chunk): (images, seconds). A chunk is what the model alone does in the budget, within
    [2, 16] batches: sized by time, not by the model's rate alone, so a model far faster
    than its decoding (a tiny model, a GPU) does not queue minutes of decoding per round."""
    chunk = max(2 * batch, min(int(math.ceil(img_s * budget)), 16 * batch))
    images, i = 0, 0
    t0 = time.perf_counter()
    while True:
        stream(r * 1_000_003 + i, chunk)  # each chunk starts further along the list
        images += chunk
        i += 1
        if time.perf_counter() - t0 >= budget:
            return images, time.perf_counter() - t0
