"""The throughput benchmark behind ``simx bench``: what it was asked (``BenchConfig``) and
the run itself (``run_bench``), which returns every figure as one ``simx-bench/1`` dict.

Why it looks the way it does:

* **Normalized figures.** CI machines are shared and noisy: the same commit can give
  30% different raw img/s from one run to the next. Each run therefore measures a
  reference in the same process (numpy's float32 matmul rate, ``reference.sgemm_gflops``)
  and the gate compares *efficiency* = the model's achieved GFLOP/s ÷ that rate, and
  for end-to-end runs the ratio end-to-end ÷ model-only. A slower or busier machine
  slows both sides, so the ratio moves only when simx itself gets worse. Raw img/s is
  shown next to it but never gated. The reference and the model alternate in short
  rounds and efficiency is the median of the per-round ratios, so load that comes and
  goes during the run hits both sides of each ratio.
* **The reference uses every core**, whatever ``--threads`` says, so a run that uses
  fewer cores than before (a thread-setting regression) shows as lower efficiency.
* **Warm-up excluded**, and latencies are per batch, so p50/p90/p99 say what one call
  costs; the first call's graph and allocator warm-up is reported as cold start instead.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from simx.bench.flops import model_gflops
from simx.bench.reference import cold_start, gemm_gflops
from simx.bench.schema import SCHEMA
from simx.bench.stages import ImageSet, end_to_end_stream, load_images, make_encoder
from simx.bench.timing import interleaved, latency_ms
from simx.core import machine as sysinfo
from simx.core.errors import SimxError

# Transitional: simx.cli.app still does ``from simx.bench import run as bench`` and reads
# these as ``bench.X``. Drop these three lines once it does ``from simx import bench``.
from simx.bench.gate import compare as compare, precheck as precheck, render_gate as render_gate
from simx.bench.render import render as render
from simx.bench.schema import load_result as load_result, write_result as write_result

DEFAULT_BATCH_SIZES = (1, 8, 32)


@dataclass
class BenchConfig:
    """What ``simx bench`` was asked to do."""

    model: str
    provider: str = "auto"
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    images: Path | None = None  # None: synthetic input
    seconds: float = 5.0
    threads: int | None = None
    warmup: int = 2
    sgemm_n: int = 2048
    rounds: int = 5  # sgemm / model alternations per batch size
    precision: str | None = None  # None: the file's; "auto": calibrated (simx.run.autoselect)
    provider_options: dict[str, str] = field(default_factory=dict)
    device_id: int = 0

    def session_kwargs(self) -> dict[str, Any]:
        """How open_model and the Encoder are asked for this run's provider and precision."""
        return {"provider": self.provider, "threads": self.threads, "precision": self.precision,
                "provider_options": self.provider_options or None, "device_id": self.device_id}

    def check(self) -> None:
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise SimxError(f"batch sizes must be positive integers, got {list(self.batch_sizes)}")
        if self.seconds <= 0:
            raise SimxError("--seconds must be positive")
        if self.rounds < 1 or self.sgemm_n < 16:
            raise SimxError("--rounds must be at least 1 and --sgemm-size at least 16")


# ----------------------------------------------------------------------------- setup
def _open_session(cfg: BenchConfig, say: Callable[[str], None]) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """(the model session, the machine facts, the cold-start figures so far)."""
    from simx.run.session import open_model, read_spec

    read_spec(cfg.model)  # fails fast on a bad model; also brings the file into the OS cache
    machine = sysinfo.machine_facts()
    say("cold start: import times in a fresh interpreter ...")
    cold = cold_start()
    t0 = time.perf_counter()
    ms = open_model(cfg.model, **cfg.session_kwargs())
    if ms.choice:
        say(ms.choice["line"])
        if ms.choice.get("warning"):
            say(f"warning: {ms.choice['warning']}")
    cold["session_create_s"] = time.perf_counter() - t0
    return ms, machine, cold


def _same_precision_gemm(ms: Any, cfg: BenchConfig) -> dict[str, Any]:
    """One MatMul graph through the model's own provider and precision."""
    prec = ms.precision if ms.precision in ("fp32", "bf16", "fp16") else "fp32"
    return gemm_gflops(ms.provider, prec, threads=cfg.threads, device_id=cfg.device_id)


# ----------------------------------------------------------------------------- measuring
def _end_to_end(rounds: list[dict[str, float]], stages: dict[str, Any], img_s: float) -> dict[str, Any]:
    n = sum(r["e2e_images"] for r in rounds)
    e2e = n / sum(r["e2e_s"] for r in rounds)
    seq = stages["decode_ms_per_image"] + stages["preprocess_ms_per_image"] + 1e3 / img_s
    return {
        "images": n,
        "img_s": e2e,
        "ms_per_image": 1e3 / e2e,
        # median over rounds of (round's e2e img/s / round's model-only img/s)
        "ratio_to_model_only": float(np.median(
            [r["e2e_images"] / r["e2e_s"] / r["img_s"] for r in rounds])),
        "sequential_ms_per_image": seq,  # decode + preprocess + inference, no overlap
        "overlap_speedup": seq / (1e3 / e2e),
    }


def _row(b: int, lat: list[float], rounds: list[dict[str, float]], gflops: float | None,
         images: ImageSet | None) -> dict[str, Any]:
    """One batch size's result row (the normalized figures are added later)."""
    img_s = b * len(lat) / sum(lat)
    return {
        "batch_size": b,
        "model_only": {
            "batches": len(lat),
            "images": b * len(lat),
            "img_s": img_s,
            "ms_per_image": 1e3 / img_s,
            "latency_ms": latency_ms(lat),
            "gflops_s": img_s * gflops if gflops else None,
            "rounds": rounds,
        },
        "end_to_end": _end_to_end(rounds, images.stages, img_s) if images is not None else None,
    }


def _measure(ms: Any, cfg: BenchConfig, rng: np.random.Generator, images: ImageSet | None,
             gflops: float | None, sgemm_log: list[dict[str, Any]],
             say: Callable[[str], None]) -> tuple[list[dict[str, Any]], Any]:
    """Every batch size's row, and the Encoder used end to end (None without images)."""
    s = ms.spec.image_size
    encoder = None
    results: list[dict[str, Any]] = []
    for b in cfg.batch_sizes:
        if images is not None:
            x = np.stack([images.tensors[i % len(images.tensors)] for i in range(b)])
        else:
            x = rng.standard_normal((b, 3, s, s), dtype=np.float32)
        then = " then end-to-end" if images is not None else ""
        say(f"batch {b}: {cfg.rounds} rounds of reference sgemm ({cfg.sgemm_n}^2 float32, all "
            f"cores) then model-only{then}, {cfg.seconds:g} s of model time in all ...")
        stream = None
        if images is not None:
            if encoder is None:
                encoder = make_encoder(cfg.model, cfg.session_kwargs())
            stream = end_to_end_stream(encoder, images.paths, b)
        lat, rounds = interleaved(lambda x=x: ms.run(x), b, seconds=cfg.seconds, rounds=cfg.rounds,
                                  warmup=cfg.warmup, sgemm_n=cfg.sgemm_n, sgemm_log=sgemm_log,
                                  stream=stream)
        results.append(_row(b, lat, rounds, gflops, images))
    return results, encoder


# ----------------------------------------------------------------------------- normalizing
def _normalize(results: list[dict[str, Any]], gflops: float | None, on_gpu: bool) -> None:
    """Add img/s per sgemm GFLOP/s and efficiency to each row.

    Efficiency is the median over rounds of (round's model GFLOP/s / round's sgemm
    GFLOP/s): each ratio compares two things measured seconds apart under the same load,
    and the median drops rounds where a burst hit only one side.
    """
    for row in results:
        m = row["model_only"]
        per = [r["img_s"] / r["sgemm_gflops"] for r in m["rounds"]]
        m["img_s_per_sgemm_gflops"] = None if on_gpu else float(np.median(per))
        m["efficiency"] = (m["img_s_per_sgemm_gflops"] * gflops) if (gflops and not on_gpu) else None


def _same_precision(results: list[dict[str, Any]], gemm: list[dict[str, Any]]) -> dict[str, Any]:
    """The same-precision reference (mean of the before and after samples), and each row's
    efficiency against it."""
    good = [g["gflops"] for g in gemm if g.get("gflops")]
    ref_same = {**gemm[0], "gflops": float(np.mean(good)) if good else None,
                "samples": [g.get("gflops") for g in gemm]}
    for row in results:
        m = row["model_only"]
        m["efficiency_same_precision"] = (m["gflops_s"] / ref_same["gflops"]
                                          if m["gflops_s"] and ref_same["gflops"] else None)
    return ref_same


# ----------------------------------------------------------------------------- the result
def _model_block(ms: Any, gflops: float | None, gflops_source: str | None,
                 gflops_graph: float | None) -> dict[str, Any]:
    spec = ms.spec
    return {
        "id": spec.id,
        "path": str(ms.path),
        "family": spec.family,
        "variant": spec.variant,
        "source": spec.source,
        "weights": spec.weights,
        "precision": spec.precision,
        "image_size": spec.image_size,
        "dim": spec.dim,
        "spec_hash": spec.embedding_hash(),
        "file_mb": round(ms.path.stat().st_size / 2**20, 1),
        "gflops_per_image": gflops,
        "gflops_source": gflops_source,
        "gflops_graph": gflops_graph,
        "gflops_metadata": spec.gflops,
    }


def _config_block(cfg: BenchConfig, ms: Any, with_images: bool) -> dict[str, Any]:
    return {
        "provider_requested": cfg.provider,
        "precision_requested": cfg.precision,
        "provider": ms.provider,
        "precision": ms.precision,
        "auto_choice": ms.choice,
        "providers": list(ms.providers),
        "threads": cfg.threads,
        "batch_sizes": list(cfg.batch_sizes),
        "seconds_per_batch_size": cfg.seconds,
        "warmup_batches": cfg.warmup,
        "mode": "images" if with_images else "synthetic",
        "images_dir": str(cfg.images) if cfg.images is not None else None,
    }


def _reference_block(cfg: BenchConfig, sgemm_log: list[dict[str, Any]],
                     on_gpu: bool) -> dict[str, Any]:
    """The sgemm reference: the median of every sample of the run."""
    samples = [g for x in sgemm_log for g in x["gflops_samples"]]
    return {
        "kind": "numpy float32 matmul (sgemm), all cores, median of the run's samples",
        "n": cfg.sgemm_n,
        "gflops": float(np.median(samples)),
        "gflops_best": max(samples),
        "samples": len(samples),
        "note": "efficiency is n/a on a GPU: the reference is a CPU measurement" if on_gpu else None,
    }


# ----------------------------------------------------------------------------- the run
def run_bench(cfg: BenchConfig, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the benchmark and return every figure as one JSON-ready dict (schema ``SCHEMA``)."""
    say = log or (lambda _msg: None)
    cfg.check()
    ms, machine, cold = _open_session(cfg, say)
    say("counting GFLOP/image from the graph ...")
    gflops, gsrc, g_graph = model_gflops(ms.path, ms.spec)
    images = load_images(cfg.images, ms.spec, say) if cfg.images is not None else None

    rng = np.random.default_rng(0)
    # First call on a fresh session pays for allocator and kernel set-up: cold start too.
    s = ms.spec.image_size
    x1 = rng.standard_normal((1, 3, s, s), dtype=np.float32)
    t0 = time.perf_counter()
    ms.run(x1)
    cold["first_inference_s"] = time.perf_counter() - t0

    say(f"reference GEMM through {ms.provider} at {ms.precision} ...")
    gemm = [_same_precision_gemm(ms, cfg)]
    sgemm_log: list[dict[str, Any]] = []
    results, encoder = _measure(ms, cfg, rng, images, gflops, sgemm_log, say)
    on_gpu = bool(ms.on_gpu)
    _normalize(results, gflops, on_gpu)
    gemm.append(_same_precision_gemm(ms, cfg))  # before and after: load drifts during a run
    ref_same = _same_precision(results, gemm)

    stages = images.stages if images is not None else None
    if encoder is not None:
        stages = (stages or {}) | {"decode_pool": encoder.pool_report()}
    machine["load_average_at_end"] = sysinfo.load_average()
    return {
        "schema": SCHEMA,
        "timestamp": machine["timestamp"],
        "machine": machine,
        "model": _model_block(ms, gflops, gsrc, g_graph),
        "config": _config_block(cfg, ms, images is not None),
        "reference": _reference_block(cfg, sgemm_log, on_gpu),
        "reference_same_precision": ref_same,
        "cold_start": cold,
        "stages": stages,
        "results": results,
    }
