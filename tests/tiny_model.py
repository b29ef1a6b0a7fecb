"""A tiny but real simx model file, for tests that need the runtime and not DINOv2.

It is built with onnx.helper in milliseconds and carries a valid simx ModelSpec, so
everything that reads a model (session, encoder, cache, CLI, bench) runs the same code
path it runs for an exported DINOv2 or OpenCLIP file, only about 1000x faster.

Graph: pixel_values [N, 3, S, S] -> Conv(3->C, k=4, s=4) -> Relu -> GlobalAveragePool
-> Flatten -> MatMul [C, D] -> embeddings [N, D]; the batch axis is symbolic. Weights
come from a fixed seed, so distinct images give distinct embeddings.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def tiny_spec(
    model_id: str = "tiny-test",
    image_size: int = 32,
    resize: int = 36,
    dim: int = 16,
    weights: str = "random",
    precision: str = "fp32",
    source: str = "test:tiny",
):
    """A ModelSpec for the tiny model; change ``weights`` or ``resize`` to get another hash."""
    from simx.model.spec import ModelSpec, PreprocessSpec

    return ModelSpec(
        id=model_id,
        family="test",
        variant="tiny",
        source=source,
        weights=weights,
        image_size=image_size,
        dim=dim,
        normalize=True,
        preprocess=PreprocessSpec(resize=resize, crop=image_size, mean=IMAGENET_MEAN,
                                  std=IMAGENET_STD),
        precision=precision,
    )


def build_tiny_model(
    path: str | Path,
    *,
    model_id: str = "tiny-test",
    image_size: int = 32,
    resize: int = 36,
    dim: int = 16,
    channels: int = 32,
    seed: int = 0,
    weights: str = "random",
    with_spec: bool = True,
    dynamic_int8: bool = False,
    source: str = "test:tiny",
) -> Path:
    """Write the tiny model to ``path`` and return it.

    ``dynamic_int8`` quantizes the pooled features per tensor at run time, as
    onnxruntime's dynamic int8 quantization does: then an image's embedding depends on
    its batch mates, which is what the Encoder's per-image mode exists for.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    conv_w = rng.standard_normal((channels, 3, 4, 4)).astype(np.float32) * 0.2
    conv_b = rng.standard_normal(channels).astype(np.float32) * 0.1
    proj = rng.standard_normal((channels, dim)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["pixel_values", "conv_w", "conv_b"], ["c"],
                         kernel_shape=[4, 4], strides=[4, 4]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"], axis=1),
        helper.make_node("MatMul", ["f", "proj"], ["embeddings"]),
    ]
    if dynamic_int8:
        nodes[-1:] = [
            helper.make_node("DynamicQuantizeLinear", ["f"], ["q", "q_scale", "q_zero"]),
            helper.make_node("DequantizeLinear", ["q", "q_scale", "q_zero"], ["fq"]),
            helper.make_node("MatMul", ["fq", "proj"], ["embeddings"]),
        ]
    graph = helper.make_graph(
        nodes,
        "simx_tiny",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT,
                                       ["batch", 3, image_size, image_size])],
        [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["batch", dim])],
        initializer=[numpy_helper.from_array(conv_w, "conv_w"),
                     numpy_helper.from_array(conv_b, "conv_b"),
                     numpy_helper.from_array(proj, "proj")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9  # old enough for any onnxruntime simx supports
    if with_spec:
        spec = tiny_spec(model_id, image_size, resize, dim, weights,
                         "int8" if dynamic_int8 else "fp32", source=source)
        helper.set_model_props(model, {"simx": spec.to_json()})
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model as a file (import this fixture into a test module to use it)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-test.onnx")


@pytest.fixture(scope="module")
def tiny_enc(tiny: Path):
    """A CPU Encoder on the tiny model, one intra-op thread."""
    from simx.run.encoder import Encoder

    return Encoder(tiny, provider="cpu", threads=1)
