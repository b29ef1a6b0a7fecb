"""Checks a model file must pass when it opens, before any image is decoded.

A spec is a claim; the graph is the truth. An output of width 1 under a spec of dim 64
would broadcast into rows of ones, and a width of 48 would fail only at the cache commit,
after all the work. So the graph's inputs and outputs are checked against the spec, and
the weights against the hash the export recorded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from simx.core.errors import ModelFileError
from simx.model.spec import ModelSpec
from simx.model.weights_hash import weights_sha256


def _dims(shape: Any) -> list[int | str | None]:
    return [d if isinstance(d, int) and d > 0 else (d if isinstance(d, str) else None)
            for d in (shape or [])]


def _is_symbolic(d: int | str | None) -> bool:
    return not isinstance(d, int)


def kind_of(spec: ModelSpec) -> str:
    """"text" for a CLIP text tower, else "image"."""
    return "text" if spec.extra.get("kind") == "text" else "image"


def check_kind(path: Path, spec: ModelSpec, want: str) -> None:
    """Refuse a text tower where an image model is needed, and the reverse, with the fix."""
    got = kind_of(spec)
    if got == want:
        return
    if got == "text":
        image = spec.extra.get("image_model") or "its image model"
        raise ModelFileError(
            f"{path.name} is the text tower of {image}; use it with `simx search --text`. "
            f"Embedding images needs the image model ({image})")
    raise ModelFileError(f"{path.name} is an image model ({spec.id}), not a text tower")


def check_io(path: Path, spec: ModelSpec, session: Any) -> None:
    """The graph has the one input and output the spec names, with the spec's shapes."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    names = [i.name for i in inputs]
    if len(inputs) != 1 or names[0] != spec.input_name:
        raise ModelFileError(f"{path}: metadata names input {spec.input_name!r} but the graph "
                             f"has inputs {names}")
    out_names = [o.name for o in outputs]
    if spec.output_name not in out_names:
        raise ModelFileError(f"{path}: metadata names output {spec.output_name!r} but the graph "
                             f"has outputs {out_names}")
    x = _dims(inputs[0].shape)
    y = _dims(next(o for o in outputs if o.name == spec.output_name).shape)
    if kind_of(spec) == "image":
        s = spec.preprocess.crop
        if len(x) != 4 or x[1] != 3 or x[2:] != [s, s]:
            raise ModelFileError(f"{path}: input {spec.input_name} is {inputs[0].shape}, the "
                                 f"metadata says [batch, 3, {s}, {s}]")
    elif len(x) != 2:
        raise ModelFileError(f"{path}: text input {spec.input_name} is {inputs[0].shape}, "
                             "not [batch, context]")
    if not _is_symbolic(x[0]):
        raise ModelFileError(f"{path}: the batch axis of {spec.input_name} is fixed at {x[0]}; "
                             "re-export it (simx export writes a dynamic batch axis)")
    if len(y) != 2 or (y[1] is not None and not isinstance(y[1], str) and y[1] != spec.dim):
        raise ModelFileError(f"{path}: output {spec.output_name} is {list(y)}, the metadata says "
                             f"[batch, {spec.dim}]")
    if isinstance(y[1], str) or y[1] is None:
        return  # a symbolic width: checked on the first batch (check_output)


def check_output(path: Path, spec: ModelSpec, out: Any, batch: int) -> None:
    """A run's output has the shape the spec promises (for graphs with a symbolic width)."""
    if getattr(out, "ndim", 0) != 2 or out.shape != (batch, spec.dim):
        raise ModelFileError(f"{path}: the model returned {tuple(getattr(out, 'shape', ()))} for "
                             f"a batch of {batch}; its metadata says [batch, {spec.dim}]")


def check_weights(path: Path, spec: ModelSpec) -> None:
    """The weights are those the export measured parity on (files since weights_sha256)."""
    if not spec.weights_sha256:
        return
    if weights_sha256(path) != spec.weights_sha256:
        raise ModelFileError(
            f"{path}: weights do not match the hash recorded at export: the file is damaged "
            "or was edited; re-export it")
