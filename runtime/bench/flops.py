"""GFLOP per image, counted from an ONNX graph at batch 1 (for ``simx bench``'s efficiency).

Needs ``onnx`` (the export extra), which the runtime does not depend on: without it the
count is None and the model's metadata figure is used instead (``model_gflops``).
"""

from __future__ import annotations

import itertools
import math
import os
from typing import Any, Callable, Iterable

Shape = list[int]
Known = Callable[[str], "Shape | None"]


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


def _known_in(shapes: dict[str, list[int | None]]) -> Known:
    """``known(name)``: the tensor's shape if every dim is known, else None."""

    def known(name: str) -> Shape | None:
        sh = shapes.get(name)
        return None if sh is None or any(d is None for d in sh) else sh  # type: ignore[return-value]

    return known


def _trans_a(node: Any) -> bool:
    return any(at.name == "transA" and at.i for at in node.attribute)


def _matmul_shape(a: Shape, b: Shape) -> Shape | None:
    if len(a) < 2 or len(b) < 1:
        return None
    if len(b) == 1:
        return a[:-1]
    batch_a, batch_b = a[:-2], b[:-2]
    n = max(len(batch_a), len(batch_b))
    batch_a = [1] * (n - len(batch_a)) + batch_a
    batch_b = [1] * (n - len(batch_b)) + batch_b
    return [max(x, y) for x, y in zip(batch_a, batch_b)] + [a[-2], b[-1]]


def _contrib_shape(node: Any, shape: Known) -> Shape | None:
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


def _fix_batch_at_1(model: Any) -> None:
    """Empty large float initializers (inference reads only their dims, and re-running it
    on a 300 MB proto would take minutes) and pin every graph input's batch axis at 1."""
    from onnx import TensorProto

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


def _collect_shapes(m: Any) -> dict[str, list[int | None]]:
    """Every tensor's declared or inferred shape (None for a symbolic dim)."""
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


def _add_contrib_shapes(model: Any, known: Known) -> bool:
    """Declare the output shapes of contrib ops that inference left unknown; True if any."""
    from onnx import TensorProto, helper

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
            model.graph.value_info.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, sh))
        added = True
    return added


def _shapes_at_batch_1(model: Any) -> dict[str, list[int | None]]:
    """Every tensor's shape with the batch axis fixed at 1, contrib ops included.

    onnx's shape inference stops at ops it does not know (the com.microsoft ones that
    fusion and quantization add), so this fills their outputs in by rule and runs it
    again until nothing changes.
    """
    from onnx import shape_inference

    _fix_batch_at_1(model)
    for _ in range(4 * len(model.graph.node) + 1):
        model = shape_inference.infer_shapes(model, data_prop=True)
        shapes = _collect_shapes(model)
        if not _add_contrib_shapes(model, _known_in(shapes)):
            return shapes
    return shapes


def _attention_flops(node: Any, known: Known) -> int | None:
    """Q·Kᵀ and A·V: 2 × (2·S·L·D) per batch element; the projections are MatMuls
    elsewhere for MultiHeadAttention, inside the node for Attention."""
    op = node.op_type
    q, out = known(node.input[0]), known(node.output[0])
    if q is None or out is None:
        return None
    b, s_len, d = out[0], out[1], out[2]
    k = known(node.input[1]) if (op == "MultiHeadAttention" and len(node.input) > 1
                                 and node.input[1]) else None
    l_len = k[1] if (k is not None and len(k) == 3) else s_len
    flops = 4 * b * s_len * l_len * d
    if op == "Attention":
        w = known(node.input[1])
        if w is None:
            return None
        flops += 2 * b * s_len * w[0] * w[1]
    return flops


def _node_flops(node: Any, known: Known) -> int | None:
    """FLOPs of one node: 0 for ops not counted, None where a counted op's shapes are unknown."""
    op = node.op_type
    if op in _MATMUL_OPS or op == "Gemm":
        a, out = known(node.input[0]), known(node.output[0])
        if a is None or out is None:
            return None
        if op == "Gemm":
            return 2 * _prod(out) * (a[0] if _trans_a(node) else a[1])
        # FusedMatMul may transpose A; K is then its second-to-last dim.
        k = a[-2] if (_trans_a(node) and len(a) >= 2) else a[-1]
        return 2 * _prod(out) * k
    if op in ("Conv", "ConvInteger", "QLinearConv"):
        w_name = node.input[3] if op == "QLinearConv" else node.input[1]
        w, out = known(w_name), known(node.output[0])
        if w is None or out is None:
            return None
        return 2 * _prod(out) * _prod(w[1:])
    if op in ("MultiHeadAttention", "Attention") and node.domain == "com.microsoft":
        return _attention_flops(node, known)
    return 0


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
    known = _known_in(shapes)
    flops = 0
    for node in model.graph.node:
        f = _node_flops(node, known)
        if f is None:
            return None
        flops += f
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
