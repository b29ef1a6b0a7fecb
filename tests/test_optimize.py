"""Graph fusions and precision conversions (simx.export.optimize / quantize).

Each model is exported once here *without* fusions (the session's ``exported`` fixture is
already fused), so the fused graph can be checked against the graph it came from, on
real photos. Random weights with LayerScale 1.0 (see DESIGN.md): distinct photos give
distinct embeddings, which the tests assert so that parity cannot pass trivially.
"""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from simx.model import catalogue
from simx.export import optimize, quantize

MODELS = ("dinov2-small", "openclip-vit-b-32-laion2b_s34b_b79k")
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def _pixels(rgb_photos: dict[str, np.ndarray], entry: catalogue.ModelEntry) -> np.ndarray:
    """Real photos, squashed to 224 and normalised: inputs for graph-to-graph parity."""
    from PIL import Image

    mean, std = np.array(entry.mean, np.float32), np.array(entry.std, np.float32)
    xs = []
    for name in PHOTOS:
        im = Image.fromarray(rgb_photos[name]).resize((224, 224), Image.BICUBIC)
        xs.append(((np.asarray(im, np.float32) / 255 - mean) / std).transpose(2, 0, 1))
    return np.ascontiguousarray(np.stack(xs))


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    s = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def _min_cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


def _digest(model: onnx.ModelProto) -> str:
    return hashlib.sha1(model.SerializeToString()).hexdigest()


@pytest.fixture(scope="module", params=MODELS)
def case(request, rgb_photos):
    """(entry, unfused fp32 proto, fused proto, counts, real-photo pixels, fp32 outputs)."""
    from simx.export import families, to_onnx

    entry = catalogue.get(request.param)
    built = families.build(entry, "random", 224)
    plain = to_onnx.export_onnx(built.module, 224, 18, what=entry.id)
    del built
    before = _digest(plain)
    fused, counts = optimize.fuse_for_ort(plain)
    assert _digest(plain) == before, "fuse_for_ort modified its input"
    x = _pixels(rgb_photos, entry)
    return entry, plain, fused, counts, x, _run(plain, x)


def test_fusions_happened(case):
    entry, plain, fused, counts, _, _ = case
    # DINOv2 and OpenCLIP (nn.MultiheadAttention, 3D key transpose) both fuse fully:
    # one attention and one BiasGelu per block. Layer norms stay standard
    # LayerNormalization by default (SkipLayerNormalization is slower on the CPU).
    assert counts.get("MultiHeadAttention", 0) == 12, counts
    assert counts.get("BiasGelu", 0) == 12, counts
    assert "SkipLayerNormalization" not in counts, counts
    assert counts == optimize.fused_op_counts(fused)
    onnx.checker.check_model(fused, full_check=True)  # what export's verify step runs
    assert "Softmax" in {n.op_type for n in plain.graph.node}
    assert "Softmax" not in {n.op_type for n in fused.graph.node}, "attention left unfused"
    # The io contract survives: same names, symbolic batch.
    assert [i.name for i in fused.graph.input] == [i.name for i in plain.graph.input]
    assert [o.name for o in fused.graph.output] == [o.name for o in plain.graph.output]
    assert fused.graph.input[0].type.tensor_type.shape.dim[0].dim_param


def test_skip_layer_norm_fusion(case):
    """The CUDA-oriented variant: residual adds fused into SkipLayerNormalization."""
    _, plain, _, _, x, ref = case
    fused, counts = optimize.fuse_for_ort(plain, skip_layer_norm=True)
    assert counts.get("SkipLayerNormalization", 0) == 24, counts
    assert counts.get("MultiHeadAttention", 0) == 12, counts
    assert sum(n.op_type == "LayerNormalization" for n in fused.graph.node) <= 2  # pre/post
    out = _run(fused, x)
    assert _min_cos(out, ref) >= 0.99999
    assert np.abs(out - ref).max() <= 1e-4 * np.abs(ref).max()


def test_fused_parity_strict(case):
    _, _, fused, _, x, ref = case
    out = _run(fused, x)
    assert _min_cos(ref, ref[::-1]) < 0.99, "photos gave near-identical embeddings"
    assert _min_cos(out, ref) >= 0.99999
    assert np.abs(out - ref).max() <= 1e-4 * np.abs(ref).max()
    # A batch of one through the fused graph (symbolic batch kept through the rewrites).
    np.testing.assert_allclose(_run(fused, x[:1]), ref[:1], atol=1e-4 * np.abs(ref).max())


def test_int8(case):
    _, _, fused, _, x, ref = case
    before = _digest(fused)
    q = quantize.to_int8(fused)
    assert _digest(fused) == before, "to_int8 modified its input"
    ops = [n.op_type for n in q.graph.node]
    assert ops.count("MatMulInteger") >= 48
    assert "Conv" in ops and "ConvInteger" not in ops, "patch embedding must stay float"
    onnx.checker.check_model(q, full_check=True)
    assert _min_cos(_run(q, x), ref) >= 0.99


def test_fp16(case):
    _, _, fused, _, x, ref = case
    before = _digest(fused)
    h = quantize.to_fp16(fused)
    assert _digest(fused) == before, "to_fp16 modified its input"
    f32, f16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    assert [i.type.tensor_type.elem_type for i in h.graph.input] == [f32]
    assert [o.type.tensor_type.elem_type for o in h.graph.output] == [f32]
    big = [t for t in h.graph.initializer if len(t.dims) == 2 and t.dims[0] * t.dims[1] >= 2**16]
    assert big and all(t.data_type == f16 for t in big), "weights not converted"
    onnx.checker.check_model(h, full_check=True)  # needs nodes in topological order
    # Runs on the CPU provider (onnxruntime casts nodes without fp16 kernels itself).
    assert _min_cos(_run(h, x), ref) >= 0.999


def test_batch_transpose_moved_after_matmul():
    """The ORT CPU fp16 crash workaround keeps the arithmetic (checked in fp32 here)."""
    from onnx import TensorProto as T
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 6)).astype(np.float32), "W")
    g = helper.make_graph(
        [
            helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0, 2]),
            helper.make_node("MatMul", ["t", "W"], ["m"]),
            helper.make_node("Relu", ["m"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", T.FLOAT, ["B", 5, 8])],
        [helper.make_tensor_value_info("y", T.FLOAT, [5, "B", 6])],
        [w],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    x = rng.standard_normal((3, 5, 8)).astype(np.float32)
    ref = _run(m, x)
    assert quantize._matmul_before_batch_transpose(m) == 1
    assert [n.op_type for n in m.graph.node] == ["MatMul", "Transpose", "Relu"]
    # And the sort that puts appended nodes back in order.
    shuffled = [onnx.NodeProto() for _ in range(3)]
    for dst, src in zip(shuffled, [m.graph.node[2], m.graph.node[0], m.graph.node[1]]):
        dst.CopyFrom(src)
    del m.graph.node[:]
    m.graph.node.extend(shuffled)
    quantize._toposort(m.graph)
    assert [n.op_type for n in m.graph.node] == ["MatMul", "Transpose", "Relu"]
    onnx.checker.check_model(m)
    np.testing.assert_allclose(_run(m, x), ref, rtol=1e-6, atol=1e-6)


def test_external_data_not_loaded_is_refused(case):
    _, plain, _, _, _, _ = case
    m = onnx.ModelProto()
    m.CopyFrom(plain)
    t = m.graph.initializer[0]
    t.data_location = onnx.TensorProto.EXTERNAL
    with pytest.raises(ValueError, match="external data"):
        optimize.fuse_for_ort(m)
    with pytest.raises(ValueError, match="external data"):
        quantize.to_int8(m)
