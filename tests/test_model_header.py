"""simx.model.header reads a model file's spec and its graph's inputs and outputs off the
protobuf wire format, without onnxruntime. It must agree with what onnxruntime loads, on
simx's own files, on files with external data and on old-IR files that list initializers
among the inputs, and turn anything else into one ModelFileError line."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from simx.core.errors import ModelFileError
from simx.model.header import read_header, read_spec
from tiny_model import build_tiny_model


def _ort_view(path):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ports = lambda xs: [(x.name, list(x.shape)) for x in xs]  # noqa: E731
    return s.get_modelmeta().custom_metadata_map, ports(s.get_inputs()), ports(s.get_outputs())


def _header_view(path):
    h = read_header(path)
    return h.metadata, [(p.name, p.shape) for p in h.inputs], [(p.name, p.shape) for p in h.outputs]


def test_agrees_with_onnxruntime_on_a_simx_file(tiny):
    assert _header_view(tiny) == _ort_view(tiny)
    spec = read_spec(tiny)
    assert spec.input_name == "pixel_values" and spec.dim == 16


def test_agrees_with_onnxruntime_with_external_data(tmp_path):
    src = build_tiny_model(tmp_path / "a.onnx", image_size=64, resize=72, channels=64, dim=256)
    m = onnx.load(str(src))
    out = tmp_path / "ext" / "m.onnx"
    out.parent.mkdir()
    onnx.save(m, str(out), save_as_external_data=True, all_tensors_to_one_file=True,
              location="m.onnx.data", size_threshold=0)
    assert (out.parent / "m.onnx.data").stat().st_size > out.stat().st_size
    assert _header_view(out) == _ort_view(out)
    assert read_spec(out).dim == 256


def test_initializers_listed_as_inputs_are_not_inputs(tmp_path):
    w = numpy_helper.from_array(np.ones((2, 3), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2]),
         helper.make_tensor_value_info("w", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", None])], initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 3
    p = tmp_path / "old.onnx"
    onnx.save(model, str(p))
    _, inputs, outputs = _header_view(p)
    assert inputs == [("x", ["n", 2])] and outputs == [("y", ["n", None])]


@pytest.mark.parametrize("damage, why", [
    (lambda b: b"", "empty"),
    (lambda b: b"hello, not a model", "wire type"),
    (lambda b: b[: len(b) // 2], "runs past the end"),
    (lambda b: b[:3], "truncated|runs past"),
])
def test_damaged_files_are_one_line(tiny, tmp_path, damage, why):
    p = tmp_path / "bad.onnx"
    p.write_bytes(damage(tiny.read_bytes()))
    with pytest.raises(ModelFileError, match=f"not a loadable ONNX model .*({why})"):
        read_spec(p)


def test_a_file_without_simx_metadata_says_so(tmp_path):
    p = build_tiny_model(tmp_path / "plain.onnx", with_spec=False)
    with pytest.raises(ModelFileError, match="no simx metadata"):
        read_spec(p)


def test_a_spec_that_disagrees_with_the_graph_is_refused(tmp_path):
    import json

    p = build_tiny_model(tmp_path / "t.onnx")
    m = onnx.load(str(p))
    spec = json.loads(m.metadata_props[0].value)
    spec["dim"] = 48
    m.metadata_props[0].value = json.dumps(spec)
    onnx.save(m, str(p))
    with pytest.raises(ModelFileError, match="metadata says"):
        read_spec(p)
