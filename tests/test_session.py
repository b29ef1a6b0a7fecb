"""Opening model files: clear one-line errors for wrong files, no silent provider fallback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from simx.model import catalogue
from simx.core.errors import ModelFileError, ProviderError
from simx.run.session import open_model, pick_providers, resolve_model_path
from simx.model.spec import ModelSpec, PreprocessSpec


def _pool_model(path: Path, metadata: str | None) -> Path:
    """[N,3,S,S] -> GlobalAveragePool -> [N,3]: the smallest graph with a symbolic batch."""
    x = helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3, 28, 28])
    y = helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["batch", 3])
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 3])
    nodes = [helper.make_node("GlobalAveragePool", ["pixel_values"], ["pooled"]),
             helper.make_node("Reshape", ["pooled", "shape"], ["embeddings"])]
    m = helper.make_model(helper.make_graph(nodes, "pool", [x], [y], [shape]),
                          opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 9
    if metadata is not None:
        helper.set_model_props(m, {"simx": metadata})
    onnx.save(m, path)
    return path


def _meta(**over) -> str:
    e = catalogue.get("dinov2-small")
    kw = dict(id="tiny", family="dinov2", variant="small", source=e.source, weights="random",
              image_size=28, dim=3, normalize=True,
              preprocess=PreprocessSpec(resize=32, crop=28, mean=e.mean, std=e.std))
    kw.update(over)
    return ModelSpec(**kw).to_json()


def test_a_good_file_opens_and_normalizes(tmp_path):
    m = open_model(_pool_model(tmp_path / "m.onnx", _meta()), provider="cpu")
    assert m.providers == ["CPUExecutionProvider"]
    out = m.run(np.random.default_rng(0).random((4, 3, 28, 28), dtype=np.float32))
    assert out.shape == (4, 3)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-6)


def test_ids_resolve_in_the_models_dir(tmp_path, monkeypatch):
    _pool_model(tmp_path / "tiny.onnx", _meta())
    monkeypatch.setenv("SIMX_MODELS_DIR", str(tmp_path))
    assert resolve_model_path("tiny") == tmp_path / "tiny.onnx"
    with pytest.raises(ModelFileError, match="models there: tiny"):
        resolve_model_path("nope")


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.write_text("hello, not a model"), "not a loadable ONNX model"),
        (lambda p: p.write_bytes(b""), "not a loadable ONNX model"),
        (lambda p: _pool_model(p, None), "no simx metadata"),
        (lambda p: _pool_model(p, "{broken"), "not valid JSON"),
        (lambda p: _pool_model(p, _meta(input_name="images")), "names input 'images'"),
    ],
)
def test_wrong_files_fail_with_one_line(tmp_path, make, message):
    path = tmp_path / "bad.onnx"
    make(path)
    with pytest.raises(ModelFileError, match=message) as info:
        open_model(path, provider="cpu")
    assert "\n" not in str(info.value)


def test_fp16_model_on_the_cpu_warns(tmp_path):
    path = _pool_model(tmp_path / "m.onnx", _meta(precision="fp16"))
    with pytest.warns(RuntimeWarning, match="fp16 model running on the CPU"):
        open_model(path, provider="cpu")


def test_missing_file():
    with pytest.raises(ModelFileError, match="not found"):
        open_model("/nonexistent/model.onnx")


def test_cuda_where_absent_is_an_error_not_a_fallback():
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA; the no-fallback case cannot occur here")
    with pytest.raises(ProviderError, match="not available"):
        pick_providers("cuda")
    assert pick_providers("auto") == ["CPUExecutionProvider"]
    with pytest.raises(ProviderError, match="unknown provider"):
        pick_providers("metal")


@pytest.mark.gpu
def test_cuda_session_matches_cpu(tmp_path):
    """On a CUDA host (pytest -m gpu): the session really runs on CUDA and agrees with the CPU."""
    path = _pool_model(tmp_path / "m.onnx", _meta())
    gpu = open_model(path, provider="cuda")
    assert gpu.providers[0] == "CUDAExecutionProvider" and gpu.on_gpu
    x = np.random.default_rng(1).random((8, 3, 28, 28), dtype=np.float32)
    np.testing.assert_allclose(gpu.run(x), open_model(path, provider="cpu").run(x), atol=1e-5)
