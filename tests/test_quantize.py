"""Static QDQ int8 (simx.export.quantize.to_int8_static) and its gates (verify.int8_gates).

What static int8 promises, each asserted here on real files:

* batch invariance: an image's embedding is the same at batch 8 as alone (onnxruntime's
  CPU provider), so the Encoder runs static int8 files in batches;
* accuracy: min cosine >= 0.99 against fp32 on photos (DINOv2-S and ViT-B-32, random
  weights with LayerScale 1.0), and top-10 neighbour overlap >= 0.9 against fp32 on the
  54-image evaluation set of ``simx.export.calibration``;
* distinct images keep distinct int8 embeddings (no collapse hiding behind the gates);
* onnxruntime runs the weight products on integer kernels (MatMulIntegerToFloat: u8/s8
  x s8, VNNI on this CPU), not float MatMul.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from simx import Encoder
from simx.model import catalogue
from simx.export import calibration, quantize, verify
from simx.run.session import open_model, read_spec
from simx.model.spec import METADATA_KEY
from tiny_model import build_tiny_model

MODELS = ("dinov2-small", "openclip-vit-b-32-laion2b_s34b_b79k")


def _cpu(path: Path, threads: int = 2) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _run(s: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def _optimized_ops(path: Path, tmp_path: Path) -> Counter:
    """Node types after onnxruntime's own graph optimisation (what actually runs)."""
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / f"{path.stem}.opt.onnx")
    so.log_severity_level = 3
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return Counter(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node)


@pytest.fixture(scope="module")
def paths(photo_dir) -> list[Path]:
    return sorted(photo_dir.iterdir())


# --------------------------------------------------------------------------- data sets
def test_calibration_and_evaluation_sets_are_distinct_real_photos():
    cal, ev = calibration.calibration_images(), calibration.evaluation_images()
    assert len(ev) >= 50 and len(cal) >= 16
    assert all(a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3 for a in cal)
    labels = [n for n, _ in ev]
    assert len(set(labels)) == len(labels)
    # No two evaluation images are the same pixels, and none is a calibration image.
    def digest(a: np.ndarray) -> str:
        return hashlib.sha1(a.tobytes() + str(a.shape).encode()).hexdigest()

    digests = {digest(a) for _, a in ev}
    assert len(digests) == len(ev)
    assert not digests & {digest(a) for a in cal}
    # The gate photos are kept out of calibration.
    assert set(calibration.GATE_PHOTOS) == set(verify.PHOTOS)
    assert not set(calibration.GATE_PHOTOS) & set(calibration.OTHER_PHOTOS)


# --------------------------------------------------------------------------- tiny model
@pytest.fixture(scope="module")
def tiny_static(tmp_path_factory) -> Path:
    """The tiny conv+MatMul model quantized static QDQ, with the spec export would write."""
    d = tmp_path_factory.mktemp("static")
    fp32 = build_tiny_model(d / "fp32.onnx")
    spec = read_spec(fp32)
    calib = calibration.pixels(calibration.calibration_images(), spec.preprocess)
    q = quantize.to_int8_static(onnx.load(str(fp32)), calib)
    spec = replace(spec, precision="int8", extra={"quantization": quantize.STATIC_QDQ})
    onnx.helper.set_model_props(q, {METADATA_KEY: spec.to_json()})
    path = d / "tiny-int8.onnx"
    onnx.save(q, str(path))
    return path


def test_static_int8_is_qdq_on_integer_kernels(tiny_static, tmp_path):
    ops = Counter(n.op_type for n in onnx.load(str(tiny_static)).graph.node)
    assert ops["QuantizeLinear"] >= 1 and ops["DequantizeLinear"] >= 2, ops
    assert "DynamicQuantizeLinear" not in ops
    run = _optimized_ops(tiny_static, tmp_path)
    assert run["MatMulIntegerToFloat"] == 1 and "MatMul" not in run, run


def test_encoder_batches_static_int8_and_results_do_not_move(tiny_static, paths):
    enc = Encoder(tiny_static, "cpu")
    assert not enc.per_image, "static int8 must run in batches"
    calls = []
    real = enc._session.run
    enc._session.run = lambda x: calls.append(len(x)) or real(x)  # type: ignore[method-assign]
    batched = enc.embed(paths, batch_size=8)
    assert max(calls) > 1, calls  # really batched
    alone = Encoder(tiny_static, "cpu", threads=1).embed(paths, batch_size=1)
    np.testing.assert_array_equal(batched, alone)
    # ... and distinct photos, distinct embeddings
    d = np.abs(alone[:, None] - alone[None]).max(-1)
    assert (d + np.eye(len(alone)) > 1e-3).all()


def test_int8_without_the_static_mark_still_runs_per_image(tmp_path):
    from simx.run.encoder import needs_per_image

    q = build_tiny_model(tmp_path / "q.onnx", dynamic_int8=True)
    spec = read_spec(q)
    assert needs_per_image(spec)  # int8 from before the key existed: dynamic
    assert needs_per_image(replace(spec, extra={"quantization": quantize.DYNAMIC}))
    assert not needs_per_image(replace(spec, extra={"quantization": quantize.STATIC_QDQ}))
    assert not needs_per_image(replace(spec, precision="fp32"))


def test_gates_refuse_a_batch_dependent_file(tmp_path):
    """The batch-invariance gate fails on dynamic quantization (scales over the batch)."""
    q = build_tiny_model(tmp_path / "q.onnx", dynamic_int8=True)
    ev = calibration.evaluation_images()
    x = calibration.pixels([a for _, a in ev], read_spec(q).preprocess)
    x[3] *= 8  # one bright image moves its batch mates' scale
    ref = np.concatenate([_run(_cpu(q), x[i:i + 1]) for i in range(len(x))])
    with pytest.raises(verify.VerificationError, match="not batch-invariant"):
        verify.int8_gates(q, x, ref, batch_invariant=True)
    # Run one at a time (as the Encoder does for it) it passes, against its own output.
    got = verify.int8_gates(q, x, ref, batch_invariant=False)
    assert got["top10_overlap_mean"] == 1.0


def test_gates_refuse_lost_retrieval(tiny_static):
    spec = read_spec(tiny_static)
    x = calibration.pixels([a for _, a in calibration.evaluation_images()], spec.preprocess)
    ref = np.concatenate([_run(_cpu(tiny_static), x[i:i + 8]) for i in range(0, len(x), 8)])
    fig = verify.int8_gates(tiny_static, x, ref, batch_invariant=True)
    assert fig["batch_invariance_max_rel"] == 0.0 and fig["top10_overlap_mean"] == 1.0
    shuffled = ref[np.random.default_rng(0).permutation(len(ref))]
    with pytest.raises(verify.VerificationError, match="neighbour overlap"):
        verify.int8_gates(tiny_static, x, shuffled, batch_invariant=True)


def test_static_needs_calibration(tiny_static):
    with pytest.raises(ValueError, match="calibration"):
        quantize.to_int8_static(onnx.load(str(tiny_static)), np.zeros((0, 3, 32, 32), np.float32))


# --------------------------------------------------------------------------- real models
@pytest.fixture(scope="module", params=MODELS)
def static_file(request, models_dir) -> Path:
    """``simx export ... --precision int8`` (static is the default), random weights."""
    from simx.export.api import export_model

    path = models_dir / f"{request.param}-int8.onnx"
    if not (os.environ.get("SIMX_TEST_EXPORTS") and path.exists()):
        path = export_model(catalogue.get(request.param), weights="random", output_dir=models_dir,
                            precision="int8")
    return path


@pytest.fixture(scope="module")
def eval_pixels(static_file) -> np.ndarray:
    spec = read_spec(static_file)
    return calibration.pixels([a for _, a in calibration.evaluation_images()], spec.preprocess)


def test_export_int8_is_static_and_records_its_gates(static_file):
    spec = read_spec(static_file)
    assert spec.precision == "int8"
    assert spec.extra["quantization"] == quantize.STATIC_QDQ
    assert spec.extra["calibration"]["method"] == quantize.STATIC_METHOD
    p = spec.parity
    assert p["photos_min_cosine"] >= 0.99  # against torch fp32
    assert p["batch_invariance_max_rel"] <= 1e-5
    assert p["top10_overlap_mean"] >= 0.9 and p["eval_images"] >= 50


def test_real_static_int8_is_batch_invariant(static_file, eval_pixels):
    s = _cpu(static_file)
    x = eval_pixels[:16]
    batched = np.concatenate([_run(s, x[:8]), _run(s, x[8:16])])
    alone = np.concatenate([_run(s, x[i:i + 1]) for i in range(len(x))])
    assert np.abs(batched - alone).max() <= 1e-5 * np.abs(alone).max()
    # Different batch mates (reversed, mixed with other images) do not move a row either.
    mixed = _run(s, np.ascontiguousarray(np.concatenate([x[7::-1], eval_pixels[40:43]])))
    assert np.abs(mixed[:8][::-1] - alone[:8]).max() <= 1e-5 * np.abs(alone).max()


def test_real_static_int8_keeps_cosine_and_neighbours(static_file, eval_pixels, exported):
    """Against the fp32 file (itself within 1e-5 of torch): cosine on the gate photos and
    top-10 neighbour overlap on the evaluation set, recomputed outside export."""
    fp32 = exported[read_spec(static_file).id]
    s8, s32 = _cpu(static_file), _cpu(fp32)
    e8 = np.concatenate([_run(s8, eval_pixels[i:i + 8]) for i in range(0, len(eval_pixels), 8)])
    e32 = np.concatenate([_run(s32, eval_pixels[i:i + 8]) for i in range(0, len(eval_pixels), 8)])
    labels = [n for n, _ in calibration.evaluation_images()]
    photos = [labels.index(n) for n in calibration.GATE_PHOTOS]
    cos = (e8 * e32).sum(1) / np.linalg.norm(e8, axis=1) / np.linalg.norm(e32, axis=1)
    assert cos[photos].min() >= 0.99
    assert verify.neighbour_overlap(e32, e8).mean() >= 0.9
    # distinct images, distinct int8 embeddings: no two rows alike
    full = [i for i, n in enumerate(labels) if ":" not in n]
    # (random-weight ViT-B-32 puts some grey textures at 0.98 in fp32 already: int8 must
    # not pull distinct photos closer than fp32 does)
    assert verify.max_pairwise_cosine(e8[full]) <= verify.max_pairwise_cosine(e32[full]) + 0.005
    assert verify.max_pairwise_cosine(e8[full]) < 0.995
    d = np.abs(e8[:, None] - e8[None]).max(-1) + np.eye(len(e8)) * 1e9
    assert d.min() > 1e-3 * np.abs(e8).max()


def test_real_static_int8_runs_integer_kernels_and_batches(static_file, tmp_path):
    ops = _optimized_ops(static_file, tmp_path)
    # every weight product on integer kernels (s8 x s8; OpenCLIP's Gemms become QGemm)
    assert ops["MatMulIntegerToFloat"] + ops["QGemm"] >= 48, ops
    assert not {"MatMul", "Gemm", "DynamicQuantizeMatMul"} & set(ops), ops
    assert not Encoder(static_file, "cpu").per_image
    assert open_model(static_file, provider="cpu").spec.extra["quantization"] == "static-qdq"
