"""The throughput benchmark behind ``simx bench``, and the CI regression gate.

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

import itertools
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from simx.core.errors import SimxError
from simx.core import machine as sysinfo
from simx.bench import reference

SCHEMA = "simx-bench/1"
DEFAULT_BATCH_SIZES = (1, 8, 32)


class BaselineError(SimxError):
    """A baseline that cannot be compared with this run (other model, batch sizes, mode)."""


# ----------------------------------------------------------------------------- FLOPs
def _prod(xs: Iterable[int]) -> int:
    return int(math.prod(xs))


# onnxruntime contrib ops (what graph fusion and quantization put in) that onnx's shape
# inference does not know: how their first output's shape follows from their inputs.
_SAME_SHAPE_OPS = {
    "SkipLayerNormalization", "SkipSimplifiedLayerNormalization", "SimplifiedLayerNormalization",
    "BiasGelu", "FastGelu", "Gelu", "QuickGelu", "BiasAdd", "LayerNormalization",
}
_MATMUL_OPS = {"MatMul", "FusedMatMul", "MatMulInteger", "MatMulIntegerToFloat",
               "DynamicQuantizeMatMul", "QLinearMatMul"}


def _matmul_shape(a: list[int], b: list[int]) -> list[int] | None:
    if len(a) < 2 or len(b) < 1:
        return None
    if len(b) == 1:
        return a[:-1]
    batch_a, batch_b = a[:-2], b[:-2]
    n = max(len(batch_a), len(batch_b))
    batch_a = [1] * (n - len(batch_a)) + batch_a
    batch_b = [1] * (n - len(batch_b)) + batch_b
    return [max(x, y) for x, y in zip(batch_a, batch_b)] + [a[-2], b[-1]]


def _contrib_shape(node: Any, shape: Callable[[str], list[int] | None]) -> list[int] | None:
    """Output 0's shape of a contrib op from its inputs' shapes (None if not derivable)."""
    op = node.op_type
    ins = [shape(x) if x else None for x in node.input]
    q = ins[0] if ins else None
    if q is None:
        return None
    if op in _SAME_SHAPE_OPS:
        return q
    if op in _MATMUL_OPS:
        b_idx = 3 if op == "QLinearMatMul" else 1  # QLinearMatMul: a, a_scale, a_zp, b, ...
        b = ins[b_idx] if len(ins) > b_idx else None
        return _matmul_shape(q, b) if b is not None else None
    if op == "MultiHeadAttention":
        v = ins[2] if len(ins) > 2 else None
        if len(q) == 3:
            return [q[0], q[1], v[2]] if (v is not None and len(v) == 3) else q
        if len(q) == 5:  # packed QKV [B, S, N, 3, H]
            return [q[0], q[1], q[2] * q[4]]
        return None
    if op == "Attention":
        w = ins[1] if len(ins) > 1 else None
        return [q[0], q[1], w[1] // 3] if (w is not None and len(q) == 3) else None
    return None


def _shapes_at_batch_1(model: Any) -> dict[str, list[int | None]]:
    """Every tensor's shape with the batch axis fixed at 1, contrib ops included.

    onnx's shape inference stops at ops it does not know (the com.microsoft ones that
    fusion and quantization add), so this fills their outputs in by rule and runs it
    again until nothing changes. Large float initializers are emptied first: inference
    reads only their dims, and re-running it on a 300 MB proto would take minutes.
    """
    from onnx import TensorProto, helper, shape_inference

    for init in model.graph.initializer:
        if init.data_type != TensorProto.INT64 and len(init.raw_data) > 4096:
            init.raw_data = b""
    init_names = {i.name for i in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name in init_names:
            continue
        dims = inp.type.tensor_type.shape.dim
        if len(dims):
            dims[0].Clear()
            dims[0].dim_value = 1

    def collect(m: Any) -> dict[str, list[int | None]]:
        out: dict[str, list[int | None]] = {}
        for vi in itertools.chain(m.graph.input, m.graph.value_info, m.graph.output):
            t = vi.type.tensor_type
            if t.HasField("shape"):
                sh = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
                old = out.get(vi.name)
                # a graph output declared with a symbolic batch must not hide an inferred shape
                if old is None or sum(x is None for x in sh) < sum(x is None for x in old):
                    out[vi.name] = sh
        for init in m.graph.initializer:
            out[init.name] = list(init.dims)
        return out

    for _ in range(4 * len(model.graph.node) + 1):
        model = shape_inference.infer_shapes(model, data_prop=True)
        shapes = collect(model)

        def known(name: str) -> list[int] | None:
            sh = shapes.get(name)
            return None if sh is None or any(d is None for d in sh) else sh  # type: ignore[return-value]

        added = False
        for node in model.graph.node:
            if node.domain in ("", "ai.onnx") or not node.output or known(node.output[0]):
                continue
            sh = _contrib_shape(node, known)
            if sh is None:
                continue
            outs = [node.output[0]]
            if node.op_type.startswith("Skip") and len(node.output) > 3 and node.output[3]:
                outs.append(node.output[3])  # the residual sum has the input's shape too
            for name in outs:
                for i, vi in enumerate(model.graph.value_info):
                    if vi.name == name:
                        del model.graph.value_info[i]
                        break
                model.graph.value_info.append(
                    helper.make_tensor_value_info(name, TensorProto.FLOAT, sh))
            added = True
        if not added:
            return shapes
    return shapes


def count_gflops(path: str | os.PathLike[str]) -> float | None:
    """GFLOP per image, counted from the graph at batch 1 (MatMul, Gemm, Conv, attention).

    Needs ``onnx`` (the export extra), which the runtime does not depend on: without it,
    or when a counted op's shapes stay unknown, the answer is None. A multiply-add counts
    as 2 FLOPs. Elementwise ops, softmax and norms are left out: they are a few percent of
    a ViT and not what a matmul reference measures. Fused (com.microsoft) attention and
    quantized matmuls count as the float ops they replace.
    """
    try:
        import onnx
    except ImportError:
        return None
    try:
        model = onnx.load(str(path), load_external_data=False)
        shapes = _shapes_at_batch_1(model)
    except Exception:
        return None

    def known(name: str) -> list[int] | None:
        sh = shapes.get(name)
        return None if sh is None or any(d is None for d in sh) else sh  # type: ignore[return-value]

    flops = 0
    for node in model.graph.node:
        op = node.op_type
        if op in _MATMUL_OPS:
            a, out = known(node.input[0]), known(node.output[0])
            if a is None or out is None:
                return None
            # FusedMatMul may transpose A; K is then its second-to-last dim.
            trans_a = any(at.name == "transA" and at.i for at in node.attribute)
            k = a[-2] if (trans_a and len(a) >= 2) else a[-1]
            flops += 2 * _prod(out) * k
        elif op == "Gemm":
            a, out = known(node.input[0]), known(node.output[0])
            if a is None or out is None:
                return None
            trans_a = any(at.name == "transA" and at.i for at in node.attribute)
            flops += 2 * _prod(out) * (a[0] if trans_a else a[1])
        elif op in ("Conv", "ConvInteger", "QLinearConv"):
            w_name = node.input[3] if op == "QLinearConv" else node.input[1]
            w, out = known(w_name), known(node.output[0])
            if w is None or out is None:
                return None
            flops += 2 * _prod(out) * _prod(w[1:])
        elif op in ("MultiHeadAttention", "Attention") and node.domain == "com.microsoft":
            # Q·Kᵀ and A·V: 2 × (2·S·L·D) per batch element; the projections are MatMuls
            # elsewhere for MultiHeadAttention, inside the node for Attention.
            q, out = known(node.input[0]), known(node.output[0])
            if q is None or out is None:
                return None
            b, s_len = out[0], out[1]
            d = out[2]
            k = known(node.input[1]) if (op == "MultiHeadAttention" and len(node.input) > 1
                                         and node.input[1]) else None
            l_len = k[1] if (k is not None and len(k) == 3) else s_len
            if op == "Attention":
                w = known(node.input[1])
                if w is None:
                    return None
                flops += 2 * b * s_len * w[0] * w[1]
            flops += 4 * b * s_len * l_len * d
    return flops / 1e9 if flops else None


def model_gflops(path: str | os.PathLike[str], spec: Any) -> tuple[float | None, str | None, float | None]:
    """(GFLOP/image, where it came from, the graph count) for a model file.

    The graph count is preferred: it is what onnxruntime runs. The metadata figure
    (torch's FlopCounterMode at export) is the fallback where ``onnx`` is missing; it can
    miss fused attention kernels (SDPA, nn.MultiheadAttention's fast path) and undercount.
    """
    g_graph = count_gflops(path)
    if g_graph:
        return g_graph, "graph", g_graph
    if spec.gflops:
        return float(spec.gflops), "metadata", None
    return None, None, None


# ----------------------------------------------------------------------------- timing
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


def _interleaved(
    call: Callable[[], Any],
    batch: int,
    cfg: BenchConfig,
    sgemm_log: list[dict[str, Any]],
    stream: Callable[[int, int], None] | None = None,
) -> tuple[list[float], list[dict[str, float]]]:
    """Alternate a short sgemm measurement with a slice of model calls, ``cfg.rounds`` times.

    Returns every call's latency and, per round, the model's img/s and the sgemm GFLOP/s
    measured just before it. Load on a shared machine changes over seconds; pairing each
    slice with its own reference keeps the ratio honest when it does. With ``stream``
    (``stream(round, n)`` embeds n files end to end), each round also times that many
    images through the real pipeline, about as long as the model slice took.
    """
    for _ in range(max(0, cfg.warmup)):
        call()
    lat: list[float] = []
    rounds: list[dict[str, float]] = []
    n = max(1, cfg.rounds)
    for r in range(n):
        sg = reference.sgemm_gflops(cfg.sgemm_n, repeats=cfg.sgemm_repeats)
        sgemm_log.append(sg)
        time.sleep(0.15)  # OpenBLAS workers spin ~0.1 s after a call; let them go idle
        part = time_calls(call, cfg.seconds / n, warmup=0, min_calls=1)
        lat += part
        rnd = {"sgemm_gflops": sg["gflops"], "img_s": batch * len(part) / sum(part)}
        if stream is not None:
            k = max(2 * batch, int(math.ceil(rnd["img_s"] * cfg.seconds / n)))
            t0 = time.perf_counter()
            stream(r, k)
            rnd["e2e_images"] = k
            rnd["e2e_s"] = time.perf_counter() - t0
        rounds.append(rnd)
    return lat, rounds


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
    max_images: int = 256  # cap on distinct images decoded for the stage split
    sgemm_n: int = 2048
    sgemm_repeats: int = 2  # timed sgemm calls per round (best of), after one warm-up
    rounds: int = 5  # sgemm / model alternations per batch size
    precision: str | None = None  # None: the file's; "auto": calibrated (simx.autoselect)
    provider_options: dict[str, str] = field(default_factory=dict)
    device_id: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def session_kwargs(self) -> dict[str, Any]:
        """How open_model and the Encoder are asked for this run's provider and precision."""
        return {"provider": self.provider, "threads": self.threads, "precision": self.precision,
                "provider_options": self.provider_options or None, "device_id": self.device_id}


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


def _decode_and_preprocess(
    paths: Sequence[Path], spec: Any, cap: int
) -> tuple[list[np.ndarray], dict[str, Any], list[Path]]:
    """Decode and preprocess each image once, one at a time, timing each stage per image.

    Also returns the paths that decoded: the end-to-end phase runs on those only, so one
    corrupt file in the folder cannot abort the benchmark (its count is reported)."""
    from simx.images.decode import load_rgb
    from simx.images.preprocess import preprocess

    t_dec: list[float] = []
    t_pre: list[float] = []
    tensors: list[np.ndarray] = []
    good: list[Path] = []
    skipped = 0
    for p in list(paths)[:cap]:
        t0 = time.perf_counter()
        try:
            rgb = load_rgb(p)
        except SimxError:
            skipped += 1  # unreadable files are the encoder's failed.jsonl business
            continue
        t1 = time.perf_counter()
        x = preprocess(rgb, spec.preprocess)
        t2 = time.perf_counter()
        t_dec.append(t1 - t0)
        t_pre.append(t2 - t1)
        tensors.append(np.asarray(x, dtype=np.float32))
        good.append(p)
    if not tensors:
        raise SimxError(f"none of the {skipped} images could be decoded: nothing to benchmark")
    return tensors, {
        "images": len(tensors),
        "skipped": skipped,
        "decode_ms_per_image": float(np.mean(t_dec) * 1e3),
        "preprocess_ms_per_image": float(np.mean(t_pre) * 1e3),
    }, good


def _same_precision_gemm(ms: Any, cfg: BenchConfig) -> dict[str, Any]:
    """One MatMul graph through the model's own provider and precision (simx.refgemm)."""
    from simx.bench.refgemm import gemm_gflops

    prec = ms.precision if ms.precision in ("fp32", "bf16", "fp16") else "fp32"
    return gemm_gflops(ms.provider, prec, threads=cfg.threads, device_id=cfg.device_id)


def _make_encoder(cfg: BenchConfig) -> Any:
    from simx.run.encoder import Encoder

    return Encoder(cfg.model, **cfg.session_kwargs())


def _encoder_embed(encoder: Any, paths: Sequence[Path], batch_size: int) -> Any:
    """Embed through the real pipeline (threaded decode overlapped with inference)."""
    import inspect

    kw: dict[str, Any] = {"batch_size": batch_size}
    try:
        params = inspect.signature(encoder.embed).parameters
        if "progress" in params:
            kw["progress"] = False
    except (TypeError, ValueError):
        pass
    return encoder.embed(list(paths), **kw)


def run_bench(cfg: BenchConfig, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the benchmark and return every figure as one JSON-ready dict (schema ``SCHEMA``)."""
    from simx.run.session import open_model, read_spec

    say = log or (lambda _msg: None)
    if not cfg.batch_sizes or any(b < 1 for b in cfg.batch_sizes):
        raise SimxError(f"batch sizes must be positive integers, got {list(cfg.batch_sizes)}")
    if cfg.seconds <= 0:
        raise SimxError("--seconds must be positive")
    if cfg.rounds < 1 or cfg.sgemm_n < 16:
        raise SimxError("--rounds must be at least 1 and --sgemm-size at least 16")

    read_spec(cfg.model)  # fails fast on a bad model; also brings the file into the OS cache
    machine = sysinfo.machine_facts()
    say("cold start: import times in a fresh interpreter ...")
    cold = reference.cold_start()
    t0 = time.perf_counter()
    ms = open_model(cfg.model, **cfg.session_kwargs())
    if ms.choice:
        say(ms.choice["line"])
        if ms.choice.get("warning"):
            say(f"warning: {ms.choice['warning']}")
    cold["session_create_s"] = time.perf_counter() - t0
    spec = ms.spec
    s = spec.image_size

    say("counting GFLOP/image from the graph ...")
    gflops, gsrc, g_graph = model_gflops(ms.path, spec)

    paths: list[Path] = []
    stages: dict[str, Any] | None = None
    tensors: list[np.ndarray] = []
    if cfg.images is not None:
        from simx.images.decode import find_images

        paths = [Path(p) for p in find_images([cfg.images])]
        if not paths:
            raise SimxError(f"no images found in {cfg.images}")
        say(f"decode + preprocess {min(len(paths), cfg.max_images)} images, one at a time ...")
        tensors, stages, paths = _decode_and_preprocess(paths, spec, cfg.max_images)
        if stages["skipped"]:
            say(f"skipped {stages['skipped']} file(s) that do not decode")

    sg: list[dict[str, Any]] = []

    rng = np.random.default_rng(0)
    # First call on a fresh session pays for allocator and kernel set-up: cold start too.
    x1 = rng.standard_normal((1, 3, s, s), dtype=np.float32)
    t0 = time.perf_counter()
    ms.run(x1)
    cold["first_inference_s"] = time.perf_counter() - t0

    say(f"reference GEMM through {ms.provider} at {ms.precision} ...")
    gemm = [_same_precision_gemm(ms, cfg)]

    encoder = None
    results: list[dict[str, Any]] = []
    for b in cfg.batch_sizes:
        if tensors:
            idx = [i % len(tensors) for i in range(b)]
            x = np.stack([tensors[i] for i in idx])
        else:
            x = rng.standard_normal((b, 3, s, s), dtype=np.float32)
        say(f"batch {b}: {cfg.rounds} rounds of reference sgemm ({cfg.sgemm_n}^2 float32, all "
            f"cores) then model-only{' then end-to-end' if paths else ''}, {cfg.seconds:g} s "
            "of model time in all ...")
        stream: Callable[[int, int], None] | None = None
        if paths:
            if encoder is None:
                encoder = _make_encoder(cfg)
            _encoder_embed(encoder, [paths[i % len(paths)] for i in range(2 * b)], b)  # warm-up

            def _stream(r: int, k: int, b: int = b) -> None:
                _encoder_embed(encoder, [paths[(r * k + i) % len(paths)] for i in range(k)], b)

            stream = _stream
        lat, rounds = _interleaved(lambda: ms.run(x), b, cfg, sg, stream)
        img_s = b * len(lat) / sum(lat)
        row: dict[str, Any] = {
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
            "end_to_end": None,
        }
        if paths:
            n = sum(r["e2e_images"] for r in rounds)
            e2e = n / sum(r["e2e_s"] for r in rounds)
            seq = stages["decode_ms_per_image"] + stages["preprocess_ms_per_image"] + 1e3 / img_s
            row["end_to_end"] = {
                "images": n,
                "img_s": e2e,
                "ms_per_image": 1e3 / e2e,
                # median over rounds of (round's e2e img/s / round's model-only img/s)
                "ratio_to_model_only": float(np.median(
                    [r["e2e_images"] / r["e2e_s"] / r["img_s"] for r in rounds])),
                "sequential_ms_per_image": seq,  # decode + preprocess + inference, no overlap
                "overlap_speedup": seq / (1e3 / e2e),
            }
        results.append(row)
    # The reference figure is the median of every sgemm sample of the run. Efficiency is
    # the median over rounds of (round's model GFLOP/s / round's sgemm GFLOP/s): each
    # ratio compares two things measured seconds apart under the same load, and the
    # median drops rounds where a burst hit only one side.
    samples = [g for x in sg for g in x["gflops_samples"]]
    ref = float(np.median(samples))
    on_gpu = bool(ms.on_gpu)
    for row in results:
        m = row["model_only"]
        per = [r["img_s"] / r["sgemm_gflops"] for r in m["rounds"]]
        m["img_s_per_sgemm_gflops"] = None if on_gpu else float(np.median(per))
        m["efficiency"] = (m["img_s_per_sgemm_gflops"] * gflops) if (gflops and not on_gpu) else None

    gemm.append(_same_precision_gemm(ms, cfg))  # before and after: load drifts during a run
    good = [g["gflops"] for g in gemm if g.get("gflops")]
    ref_same = {**gemm[0], "gflops": float(np.mean(good)) if good else None,
                "samples": [g.get("gflops") for g in gemm]}
    for row in results:
        m = row["model_only"]
        m["efficiency_same_precision"] = (m["gflops_s"] / ref_same["gflops"]
                                          if m["gflops_s"] and ref_same["gflops"] else None)
    if encoder is not None:
        stages = (stages or {}) | {"decode_pool": encoder.pool_report()}

    machine["load_average_at_end"] = sysinfo.load_average()
    return {
        "schema": SCHEMA,
        "timestamp": machine["timestamp"],
        "machine": machine,
        "model": _model_block(ms, gflops, gsrc, g_graph),
        "config": {
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
            "mode": "images" if paths else "synthetic",
            "images_dir": str(cfg.images) if cfg.images is not None else None,
            **cfg.extra,
        },
        "reference": {
            "kind": "numpy float32 matmul (sgemm), all cores, median of the run's samples",
            "n": cfg.sgemm_n,
            "gflops": ref,
            "gflops_best": max(samples),
            "samples": len(samples),
            "note": "efficiency is n/a on a GPU: the reference is a CPU measurement" if on_gpu else None,
        },
        "reference_same_precision": ref_same,
        "cold_start": cold,
        "stages": stages,
        "results": results,
    }


# ----------------------------------------------------------------------------- schema
_REQUIRED: dict[str, tuple[str, ...]] = {
    "": ("schema", "timestamp", "machine", "model", "config", "reference", "cold_start", "results"),
    "machine": ("cpu_model", "logical_cores", "onnxruntime", "numpy", "simx", "timestamp"),
    "model": ("id", "precision", "spec_hash", "image_size", "gflops_per_image"),
    "config": ("providers", "threads", "batch_sizes", "mode"),
    "reference": ("gflops", "n"),
    "cold_start": ("import_simx_s", "session_create_s"),
}
_ROW = ("batch_size", "model_only", "end_to_end")
_MODEL_ONLY = ("img_s", "latency_ms", "gflops_s", "efficiency", "img_s_per_sgemm_gflops")


def validate_result(d: Any, where: str = "benchmark JSON") -> dict[str, Any]:
    """Check a result (or a stored baseline) has every field the gate and the table read."""
    if not isinstance(d, dict):
        raise BaselineError(f"{where}: not a JSON object")
    if d.get("schema") != SCHEMA:
        raise BaselineError(f"{where}: schema {d.get('schema')!r}, expected {SCHEMA!r}")
    for block, keys in _REQUIRED.items():
        obj = d if not block else d.get(block)
        if not isinstance(obj, dict):
            raise BaselineError(f"{where}: missing object {block!r}")
        missing = [k for k in keys if k not in obj]
        if missing:
            raise BaselineError(f"{where}: {block or 'top level'} lacks {', '.join(missing)}")
    rows = d["results"]
    if not isinstance(rows, list) or not rows:
        raise BaselineError(f"{where}: no results")
    for r in rows:
        missing = [k for k in _ROW if k not in r] + [
            f"model_only.{k}" for k in _MODEL_ONLY if k not in r.get("model_only", {})
        ]
        if missing:
            raise BaselineError(f"{where}: a result row lacks {', '.join(missing)}")
    return d


def load_result(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise BaselineError(f"cannot read baseline {path}: {e.strerror}") from None
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise BaselineError(f"baseline {path} is not valid JSON: {e}") from None
    return validate_result(d, where=str(path))


def write_result(result: dict[str, Any], path: str | os.PathLike[str]) -> None:
    p = Path(path)
    if p.parent and not p.parent.exists():
        p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(result, indent=2, sort_keys=False) + "\n")


# ----------------------------------------------------------------------------- tables
def format_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain, aligned text table (first column left, the rest right-aligned)."""
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]

    def line(cells: Sequence[str]) -> str:
        out = [str(cells[0]).ljust(widths[0])]
        out += [str(c).rjust(w) for c, w in zip(cells[1:], widths[1:])]
        return "  ".join(out).rstrip()

    return "\n".join([line(head), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def _f(x: float | None, fmt: str = "{:.1f}") -> str:
    return "n/a" if x is None else fmt.format(x)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def render(result: dict[str, Any]) -> str:
    """The human-readable report of one run."""
    m, c, mach, ref = result["model"], result["config"], result["machine"], result["reference"]
    cold = result["cold_start"]
    gfl = m["gflops_per_image"]
    lines = [
        f"simx bench  {m['id']} ({m['precision']}, {m['image_size']}px, spec {m['spec_hash']})",
        f"machine     {mach['cpu_model']}, {mach['logical_cores']} cores, "
        f"onnxruntime {mach['onnxruntime']}, numpy {mach['numpy']}, load {mach.get('load_average_1_5_15')}",
        f"session     {', '.join(c['providers'])}, threads {c['threads'] or 'default'}, "
        f"input {c['mode']}",
        f"model       {_f(gfl, '{:.2f}')} GFLOP/image ({m['gflops_source'] or 'unknown'}); "
        f"reference sgemm {ref['gflops']:.1f} GFLOP/s (numpy, all cores, median of "
        f"{ref.get('samples', '?')} samples in this run)",
        f"cold start  import simx {_f(cold.get('import_simx_s'), '{:.3f}')} s, "
        f"+runtime {_f(cold.get('import_runtime_s'), '{:.3f}')} s, "
        f"session {_f(cold.get('session_create_s'), '{:.3f}')} s, "
        f"first run {_f(cold.get('first_inference_s'), '{:.3f}')} s",
        "",
    ]
    same = result.get("reference_same_precision") or {}
    if same:
        lines.insert(-1, f"same prec.  {same.get('kind')}: {_f(same.get('gflops'))} GFLOP/s"
                         + (f" ({same['error']})" if same.get("error") else "")
                         + f"; session ran {c.get('provider', '?')} at {c.get('precision', '?')}")
    head = ["batch", "img/s", "p50 ms", "p90 ms", "p99 ms", "GFLOP/s", "efficiency",
            "eff. same prec."]
    e2e = any(r["end_to_end"] for r in result["results"])
    if e2e:
        head += ["e2e img/s", "e2e/model"]
    rows = []
    for r in result["results"]:
        mo, lat = r["model_only"], r["model_only"]["latency_ms"]
        row = [str(r["batch_size"]), _f(mo["img_s"]), _f(lat["p50"]), _f(lat["p90"]),
               _f(lat["p99"]), _f(mo["gflops_s"]), _pct(mo["efficiency"]),
               _pct(mo.get("efficiency_same_precision"))]
        if e2e:
            ee = r["end_to_end"] or {}
            row += [_f(ee.get("img_s")), _pct(ee.get("ratio_to_model_only"))]
        rows.append(row)
    lines.append(format_table(head, rows))
    st = result.get("stages")
    if st:
        lines += ["", f"stages, mean ms per image ({st['images']} images; decode and preprocess "
                  "one at a time on one thread):"]
        srows = []
        for r in result["results"]:
            ee = r["end_to_end"] or {}
            srows.append([
                str(r["batch_size"]), _f(st["decode_ms_per_image"]),
                _f(st["preprocess_ms_per_image"]), _f(r["model_only"]["ms_per_image"]),
                _f(ee.get("sequential_ms_per_image")), _f(ee.get("ms_per_image")),
            ])
        lines.append(format_table(
            ["batch", "decode", "preprocess", "inference", "sum", "end-to-end"], srows))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the gate
@dataclass
class GateRow:
    figure: str
    baseline: float | None
    now: float | None
    gated: bool

    @property
    def change(self) -> float | None:
        if self.baseline in (None, 0) or self.now is None:
            return None
        return self.now / self.baseline - 1.0


@dataclass
class GateReport:
    rows: list[GateRow]
    max_regression: float
    notes: list[str]

    def verdict(self, r: GateRow) -> str:
        if not r.gated:
            return "info (not gated)"
        ch = r.change
        if ch is None:
            return "n/a"
        if ch < -self.max_regression:
            return "REGRESSION"
        return "ok"

    @property
    def passed(self) -> bool:
        return all(self.verdict(r) != "REGRESSION" for r in self.rows)


def _row_by_batch(d: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {int(r["batch_size"]): r for r in d["results"]}


def compare(result: dict[str, Any], baseline: dict[str, Any], max_regression: float) -> GateReport:
    """Compare a run with a baseline on the normalized figures.

    Raises BaselineError when the two are not comparable: another model or precision,
    a baseline batch size the run lacks, end-to-end figures the run did not measure,
    or another provider. Thread count is *not* checked: using fewer threads than the
    baseline is exactly the kind of regression the gate exists to catch.
    """
    if not 0 <= max_regression < 1:
        raise BaselineError(f"--max-regression must be in [0, 1), got {max_regression}")
    validate_result(result, "this run")
    validate_result(baseline, "baseline")
    bm, rm = baseline["model"], result["model"]
    for key in ("id", "precision", "image_size"):
        if bm[key] != rm[key]:
            raise BaselineError(
                f"baseline is for {key} {bm[key]!r} but this run has {rm[key]!r}; "
                "record a baseline for this model"
            )
    bp, rp = baseline["config"]["providers"][:1], result["config"]["providers"][:1]
    if bp != rp:
        raise BaselineError(f"baseline ran on {bp[0] if bp else '?'} but this run on "
                            f"{rp[0] if rp else '?'}; compare like with like")
    brows, rrows = _row_by_batch(baseline), _row_by_batch(result)
    missing = sorted(set(brows) - set(rrows))
    if missing:
        raise BaselineError(
            f"baseline has batch sizes {sorted(brows)} but this run lacks {missing}; "
            f"run with --batch-sizes {','.join(map(str, sorted(brows)))}"
        )
    notes: list[str] = []
    if bm["spec_hash"] != rm["spec_hash"]:
        notes.append("spec hash differs (other weights or preprocessing): speed is comparable, "
                     "embeddings are not")
    if baseline["config"]["threads"] != result["config"]["threads"]:
        notes.append(f"threads: baseline {baseline['config']['threads'] or 'default'}, "
                     f"now {result['config']['threads'] or 'default'}")
    bmach, rmach = baseline["machine"], result["machine"]
    if (bmach["cpu_model"], bmach["logical_cores"]) != (rmach["cpu_model"], rmach["logical_cores"]):
        notes.append(f"machine: baseline {bmach['cpu_model']} x{bmach['logical_cores']}, now "
                     f"{rmach['cpu_model']} x{rmach['logical_cores']} (normalized figures travel "
                     "between machines only roughly; record a baseline per machine type)")
    extra = sorted(set(rrows) - set(brows))
    if extra:
        notes.append(f"batch sizes {extra} are not in the baseline and are not gated")

    # Efficiency is only comparable when both runs divide by the same GFLOP/image (one may
    # have counted the graph, the other read the metadata); else use the GFLOP-free rate.
    same_flops = bm["gflops_per_image"] is not None and rm["gflops_per_image"] is not None and (
        abs(bm["gflops_per_image"] / rm["gflops_per_image"] - 1) < 1e-6)
    if not same_flops:
        notes.append(f"GFLOP/image differs (baseline {bm['gflops_per_image']}, now "
                     f"{rm['gflops_per_image']}): gating img/s per sgemm GFLOP/s instead")
    rows: list[GateRow] = []
    for b in sorted(brows):
        bo, ro = brows[b]["model_only"], rrows[b]["model_only"]
        if same_flops and bo["efficiency"] is not None and ro["efficiency"] is not None:
            rows.append(GateRow(f"b={b} efficiency (model GFLOP/s / sgemm)",
                                bo["efficiency"], ro["efficiency"], True))
        elif bo["img_s_per_sgemm_gflops"] is not None and ro["img_s_per_sgemm_gflops"] is not None:
            rows.append(GateRow(f"b={b} img/s per sgemm GFLOP/s", bo["img_s_per_sgemm_gflops"],
                                ro["img_s_per_sgemm_gflops"], True))
        else:
            raise BaselineError(f"batch {b}: no normalized figure to compare (a GPU run?); "
                                "the gate needs a CPU run with its sgemm reference")
        be, re_ = brows[b].get("end_to_end"), rrows[b].get("end_to_end")
        if be:
            if not re_:
                raise BaselineError(
                    "baseline has end-to-end figures (recorded with --images) but this run has "
                    "none; run with --images too"
                )
            rows.append(GateRow(f"b={b} end-to-end / model-only", be["ratio_to_model_only"],
                                re_["ratio_to_model_only"], True))
        rows.append(GateRow(f"b={b} img/s (raw)", bo["img_s"], ro["img_s"], False))
        if be and re_:
            rows.append(GateRow(f"b={b} end-to-end img/s (raw)", be["img_s"], re_["img_s"], False))
    rows.append(GateRow("sgemm GFLOP/s (reference, raw)", baseline["reference"]["gflops"],
                        result["reference"]["gflops"], False))
    return GateReport(rows=rows, max_regression=max_regression, notes=notes)


def precheck(baseline: dict[str, Any], spec: Any, batch_sizes: Sequence[int],
             with_images: bool) -> None:
    """Refuse a mismatched baseline before spending minutes on the run."""
    bm = baseline["model"]
    for key, now in (("id", spec.id), ("precision", spec.precision), ("image_size", spec.image_size)):
        if bm[key] != now:
            raise BaselineError(f"baseline is for {key} {bm[key]!r} but the model has {now!r}; "
                                "record a baseline for this model")
    missing = sorted(set(_row_by_batch(baseline)) - set(batch_sizes))
    if missing:
        raise BaselineError(
            f"baseline has batch sizes {sorted(_row_by_batch(baseline))} but this run lacks "
            f"{missing}; run with --batch-sizes {','.join(map(str, sorted(_row_by_batch(baseline))))}"
        )
    if any(r.get("end_to_end") for r in baseline["results"]) and not with_images:
        raise BaselineError("baseline has end-to-end figures (recorded with --images) but this "
                            "run has none; run with --images too")


def render_gate(report: GateReport) -> str:
    """The gate's table: figure, baseline, now, change, verdict; then the outcome."""

    def num(x: float | None) -> str:
        if x is None:
            return "n/a"
        return f"{x:.3f}" if abs(x) < 10 else f"{x:.1f}"

    rows = []
    for r in report.rows:
        ch = r.change
        rows.append([r.figure, num(r.baseline), num(r.now),
                     "n/a" if ch is None else f"{100 * ch:+.1f}%", report.verdict(r)])
    lines = [
        f"regression gate (tolerance {100 * report.max_regression:.0f}% below baseline on "
        "normalized figures; raw img/s is shown, not gated)",
        format_table(["figure", "baseline", "now", "change", "verdict"], rows),
    ]
    lines += [f"note: {n}" for n in report.notes]
    bad = [r.figure for r in report.rows if report.verdict(r) == "REGRESSION"]
    lines.append(f"FAIL: {len(bad)} figure(s) regressed: {'; '.join(bad)}" if bad else "PASS")
    return "\n".join(lines)
