"""Precision conversions: ONNX in, ONNX out. int8 for the CPU, fp16 for the GPU.

Export calls these on the fused fp32 graph (``optimize.fuse_for_ort``) and gates the
result against torch; nothing here measures accuracy or writes the final file.

**int8** has two recipes; ``export --precision int8`` uses the static one by default.

*Static QDQ* (``to_int8_static``, ``spec.extra["quantization"] = "static-qdq"``): weight
MatMuls/Gemms with signed int8 weights per output channel and signed int8 activations
whose scales are fixed at export from calibration photos (``simx.export.calibration``,
run through simx's own preprocessing). No scale depends on the batch, so an image's
embedding is bit-identical whatever its batch mates, and the Encoder runs these files in
batches. Choices, measured here (AMD EPYC, avx512_vnni, onnxruntime 1.32, DINOv2-S random
weights, CPU provider; evaluation set then 57 images, with skimage's cat, which is chelsea):

- calibration method: MinMax, min cosine vs torch fp32 0.99841, top-10 overlap 0.995,
  17 s; Entropy the same figures (0.99841, 0.995) in 84 s; Percentile lower (0.99825,
  0.993). MinMax it is (``STATIC_METHOD``);
- MatMul outputs left float (``OpTypesToExcludeOutputQuantization``): 0.99841 against
  0.99737 when every output is re-quantized, and onnxruntime then fuses
  ``DequantizeLinear -> MatMul`` into ``MatMulIntegerToFloat`` (integer GEMM on VNNI; the
  optimised graph has 48 of them and no float weight MatMul, ``tests/test_quantize.py``);
- batch 8 against one at a time: max abs difference 0 (the gate allows 1e-5 x max|e|).

*Dynamic* (``to_int8``, ``"dynamic"``): onnxruntime's dynamic quantization, activation
scales computed per batch at run time, so an image's embedding moves with its batch mates
and the Encoder runs it one image per call. It is kept (``export --int8 dynamic``) because
it needs no calibration; speed against static is in ``benchmarks/results/compare_*.md``.
Measured earlier (``benchmarks/results/precision.md``):

- 2-3x fp32 in single-thread CPU time at batch 8 (DINOv2-S ~2.0-2.4x, ViT-B-32 ~2.9x):
  onnxruntime fuses DynamicQuantizeLinear + MatMulInteger + scale into
  ``DynamicQuantizeMatMul`` and runs u8 x s8 on VNNI. uint8 *weights* (u8 x u8) reach only
  ~1.4x;
- per-channel weights: min cosine 0.9987 vs 0.9979 per-tensor (DINOv2-S), same speed;
- ``reduce_range`` (7-bit weights, meant for CPUs without VNNI): lower cosine (0.9984),
  no speed gain here.

Both recipes: the patch-embedding Conv stays float (1-2% of int8 run time in the
profile), and attention's activation x activation products stay float (inside
MultiHeadAttention when the graph is fused). Quantizing them too (unfused graph,
``MatMulConstBOnly=False``) measured 2.38x vs 2.03x with cosine 0.9990 on random weights,
but it quantizes softmax probabilities to 8 bits per tensor, which peaked real attention
maps may not survive; it is not adopted without real-weight evidence.

**fp16** converts weights and compute to float16 with float32 graph inputs and outputs
(``keep_io_types``), so callers feed and read float32 as with the fp32 file. On the CPU
provider onnxruntime casts the nodes it has no fp16 kernel for back to float32 itself,
so the file runs there for the accuracy gate (no faster than fp32: x86 has no fp16
GEMM in onnxruntime). On CUDA these ops have fp16 kernels; GPU speed is not measured
here (no GPU was lent to this session).

One onnxruntime bug is worked around here: on the CPU provider (1.32, default graph
optimisation), a float16 ``Transpose`` that keeps the last axis feeding a ``MatMul`` with
a constant weight segfaults at session creation (MatmulTransposeFusion + NchwcTransformer;
disabling either avoids it). OpenCLIP's ``nn.MultiheadAttention`` has exactly that shape
(seq-first transpose before the QKV projection), so ``to_fp16`` moves such transposes
after their MatMul: the same arithmetic, the same op count, no crash.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

from .optimize import require_loaded_data
from .writer import EXTERNAL_DATA_THRESHOLD, tensor_bytes

#: Weight op types quantized to int8. Conv (patch embedding) deliberately left out.
INT8_OP_TYPES = ("MatMul", "Gemm")

#: Calibration method for static int8 (onnxruntime ``CalibrationMethod``), by measurement.
STATIC_METHOD = "MinMax"

def _through_files(model: onnx.ModelProto, prefix: str,
                   quantize: Callable[[Path, Path], None]) -> onnx.ModelProto:
    """Run one of onnxruntime's quantizers, which go through files, on ``model``: written
    with external data in a temporary folder, ``quantize(src, out)``, loaded back into
    memory, so any size works. The input proto is not modified.

    The model is written through onnx_ir, which streams the caller's tensors to the
    external data file without copying the proto (``quantize_*`` given a proto would
    deepcopy it first: one more full copy of a giant model in memory). The quantizer
    rewrites the graph but keeps metadata_props and the io names.
    """
    import onnx_ir as ir

    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        src, out = Path(tmp) / "model.onnx", Path(tmp) / "model-int8.onnx"
        ir.save(ir.from_proto(model), src, external_data="model.data")
        quantize(src, out)
        return onnx.load(str(out), load_external_data=True)


def to_int8(model: onnx.ModelProto) -> onnx.ModelProto:
    """CPU int8, dynamic: quantization of weight MatMuls, per-channel signed weights,
    activation scales per batch at run time (not batch-invariant: run it per image).
    The input proto is not modified.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    require_loaded_data(model)
    # Nothing else is said here: export records precision and gate figures in its spec.
    return _through_files(model, "simx-int8.", lambda src, out: quantize_dynamic(
        src,
        out,
        op_types_to_quantize=list(INT8_OP_TYPES),
        per_channel=True,
        reduce_range=False,
        weight_type=QuantType.QInt8,
        use_external_data_format=True,
        extra_options={"MatMulConstBOnly": True},
    ))


#: What ``spec.extra["quantization"]`` says for each int8 recipe. The Encoder batches
#: ``static-qdq`` files and runs ``dynamic`` ones one image at a time.
STATIC_QDQ = "static-qdq"
DYNAMIC = "dynamic"
INT8_KINDS = ("static", "dynamic")


class _Frames:
    """onnxruntime's CalibrationDataReader over a float32 [N, 3, S, S] array, one image a
    call (the calibrator concatenates the per-call statistics)."""

    def __init__(self, name: str, pixels: np.ndarray) -> None:
        self._it = iter([{name: pixels[i:i + 1]} for i in range(len(pixels))])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:  # pragma: no cover - called by some calibrators only
        raise RuntimeError("calibration data is read once")


def to_int8_static(
    model: onnx.ModelProto, calibration: np.ndarray, method: str = STATIC_METHOD
) -> onnx.ModelProto:
    """CPU int8, batch-invariant: static QDQ quantization of the weight MatMuls.

    Weights: signed int8 per output channel. Activations: signed int8 per tensor with a
    scale fixed here from ``calibration`` (float32 [N, 3, S, S] photos, preprocessed the
    runtime's way), so no scale depends on the batch at run time: an image's embedding is
    bit-identical whatever its batch mates. Only the MatMul *inputs* are quantized
    (``OpTypesToExcludeOutputQuantization``): onnxruntime fuses ``DequantizeLinear ->
    MatMul`` into ``MatMulIntegerToFloat`` (u8/s8 x s8 on VNNI) and the float output goes
    on unrounded, which measured closer to fp32 than re-quantizing every output.
    ``method``: onnxruntime CalibrationMethod name (chosen by measurement, see module doc).
    The input proto is not modified.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    require_loaded_data(model)
    if calibration.ndim != 4 or len(calibration) == 0:
        raise ValueError(f"calibration must be a non-empty [N, 3, S, S] batch, got {calibration.shape}")
    name = model.graph.input[0].name
    return _through_files(model, "simx-int8s.", lambda src, out: quantize_static(
        src,
        out,
        _Frames(name, np.ascontiguousarray(calibration, np.float32)),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(INT8_OP_TYPES),
        per_channel=True,
        reduce_range=False,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=getattr(CalibrationMethod, method),
        use_external_data_format=True,
        extra_options={
            "MatMulConstBOnly": True,
            "OpTypesToExcludeOutputQuantization": list(INT8_OP_TYPES),
        },
    ))


def _matmul_before_batch_transpose(model: onnx.ModelProto) -> int:
    """Rewrite ``MatMul(Transpose(x, p), W)`` as ``Transpose(MatMul(x, W), p)`` in place,
    where ``p`` keeps the last axis and ``W`` is a 2D initializer (so the MatMul only
    touches the last axis and commutes with the transpose). Returns the number rewritten.
    """
    graph = model.graph
    weights = {t.name for t in graph.initializer if len(t.dims) == 2}
    producer = {o: i for i, n in enumerate(graph.node) for o in n.output}
    uses: dict[str, int] = {}
    for n in graph.node:
        for name in n.input:
            uses[name] = uses.get(name, 0) + 1
    outputs = {o.name for o in graph.output}
    done = 0
    for mi, mm in enumerate(graph.node):
        if mm.op_type != "MatMul" or mm.domain not in ("", "ai.onnx") or len(mm.input) != 2:
            continue
        a, w = mm.input
        ti = producer.get(a)
        if w not in weights or ti is None or uses.get(a) != 1 or a in outputs:
            continue
        tr = graph.node[ti]
        if tr.op_type != "Transpose" or tr.domain not in ("", "ai.onnx"):
            continue
        perm = [list(x.ints) for x in tr.attribute if x.name == "perm"]
        if not perm or not perm[0] or perm[0][-1] != len(perm[0]) - 1:
            continue
        x, y = tr.input[0], mm.output[0]
        mid = f"{y}__before_transpose"
        mm.input[0], mm.output[0] = x, mid
        tr.input[0], tr.output[0] = mid, y
        # Swap places so the node list stays topologically sorted.
        mm_copy, tr_copy = onnx.NodeProto(), onnx.NodeProto()
        mm_copy.CopyFrom(mm)
        tr_copy.CopyFrom(tr)
        graph.node[ti].CopyFrom(mm_copy)
        graph.node[mi].CopyFrom(tr_copy)
        producer[mid], producer[y] = ti, mi
        stale = [v for v in graph.value_info if v.name == a]
        for v in stale:
            graph.value_info.remove(v)
        done += 1
    return done


def _toposort(graph: onnx.GraphProto) -> None:
    """Sort nodes topologically in place, keeping the existing order where it is valid.

    The fp16 converter appends its graph-input Casts at the end of the node list, which
    onnxruntime accepts but ``onnx.checker`` (and export's full check) rejects.
    """
    import heapq

    nodes = list(graph.node)
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    waiting = [0] * len(nodes)
    consumers: dict[int, list[int]] = {}
    for i, n in enumerate(nodes):
        deps = {producer[x] for x in n.input if x in producer and producer[x] != i}
        waiting[i] = len(deps)
        for d in deps:
            consumers.setdefault(d, []).append(i)
    ready = [i for i, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for c in consumers.get(i, ()):
            waiting[c] -= 1
            if waiting[c] == 0:
                heapq.heappush(ready, c)
    if len(order) != len(nodes):
        raise ValueError("graph has a cycle; cannot sort its nodes")
    if order != list(range(len(nodes))):
        copies = [onnx.NodeProto() for _ in nodes]
        for c, i in zip(copies, order):
            c.CopyFrom(nodes[i])
        del graph.node[:]
        graph.node.extend(copies)


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """fp16 weights and compute, float32 inputs and outputs; the input proto is untouched.

    Shape inference (which the converter uses to type intermediate values) needs a
    serialized proto, so above protobuf's 2 GiB limit it is skipped: exports from torch
    and from ``fuse_for_ort`` already carry value_info for their intermediate values.
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16

    require_loaded_data(model)
    small = tensor_bytes(model) < EXTERNAL_DATA_THRESHOLD
    # With shape inference on, the converter works on inference's copy; with it off it
    # edits the proto in place, so copy first.
    src = model if small else copy.deepcopy(model)
    half = convert_float_to_float16(src, keep_io_types=True, disable_shape_infer=not small)
    _matmul_before_batch_transpose(half)
    _toposort(half.graph)
    return half
