"""torch -> ONNX with a symbolic batch axis (the file is written by ``writer``).

The dynamo exporter given a batch-1 example silently fixes the batch at 1, so the
example batch is 2 and the exported graph is checked for a symbolic dim 0.
"""

from __future__ import annotations

import onnx
import torch
from torch import nn

from simx.core.errors import first_line

from .writer import ExportError


INPUT_NAME = "pixel_values"
OUTPUT_NAME = "embeddings"
EXAMPLE_BATCH = 2


class _Named(nn.Module):
    """Gives the exported graph's input its public name (``pixel_values``)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.module(pixel_values)


def export_onnx(module: nn.Module, image_size: int, opset: int, what: str = "model") -> onnx.ModelProto:
    """Export ``module`` (pixels [B, 3, S, S] -> [B, D]) with the dynamo exporter."""
    example = torch.randn(EXAMPLE_BATCH, 3, image_size, image_size)
    batch = torch.export.Dim("batch", min=1)
    try:
        with torch.no_grad():
            program = torch.onnx.export(
                _Named(module).eval(),
                (example,),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes={INPUT_NAME: {0: batch}},
                opset_version=opset,
                optimize=True,
                verbose=False,
            )
    except Exception as e:  # the exporter raises many types; keep the first line
        raise ExportError(f"torch.onnx.export failed for {what}: {first_line(e)}") from e
    model = program.model_proto
    del program
    assert_symbolic_batch(model, what)
    return model


def assert_symbolic_batch(model: onnx.ModelProto, what: str = "model") -> None:
    """Fail unless the input's and output's dim 0 are symbolic (the batch is dynamic)."""
    for kind, values in (("input", model.graph.input), ("output", model.graph.output)):
        if not values:
            raise ExportError(f"{what}: exported graph has no {kind}")
        dims = values[0].type.tensor_type.shape.dim
        if not dims or not dims[0].dim_param or dims[0].HasField("dim_value"):
            fixed = dims[0].dim_value if dims else "?"
            raise ExportError(f"{what}: exported {kind} batch axis is fixed at {fixed}, not symbolic")
