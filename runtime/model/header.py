"""A model file's header: its simx spec and its graph's inputs and outputs, read straight
off the protobuf wire format, without building an inference session.

Reading the spec is what ``simx info``, ``simx models --exported``, the automatic choice's
sibling search and every session's own set-up do first. Through onnxruntime that meant
loading and validating the whole graph with its weights; here the file is memory-mapped
and only the metadata and the graph's input/output declarations are touched (the
initializers are skipped by their length prefix), so the cost no longer grows with the
model. The same checks as before run on what is read (``check_io``); building a session
later still checks the graph onnxruntime actually loads.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from pathlib import Path

from simx.core.errors import ModelFileError
from simx.model import onnx_wire as w
from simx.model.check import check_io, check_kind
from simx.model.spec import ModelSpec, SpecError, read_spec_from_metadata


@dataclass(frozen=True)
class Port:
    """A graph input or output as onnxruntime's ``NodeArg`` shows it: its name and shape
    (an int per fixed axis, a str per named symbolic axis, None when neither is given)."""

    name: str
    shape: list[int | str | None]


@dataclass(frozen=True)
class Header:
    metadata: dict[str, str]
    inputs: list[Port]
    outputs: list[Port]

    # The session's names, so ``check_io`` reads a header or a session alike.
    def get_inputs(self) -> list[Port]:
        return self.inputs

    def get_outputs(self) -> list[Port]:
        return self.outputs


def _port(buf, lo: int, hi: int) -> Port:
    name, shape = "", []
    for n, wire, _, a, b in w.fields(buf, lo, hi):
        if n == w.VALUE_NAME and wire == 2:
            name = w.string(buf, a, b)
        elif n == w.VALUE_TYPE and wire == 2:
            for tn, tw, _, ta, tb in w.fields(buf, a, b):
                if tn == w.TYPE_TENSOR and tw == 2:
                    shape = _shape(buf, ta, tb)
    return Port(name, shape)


def _shape(buf, lo: int, hi: int) -> list[int | str | None]:
    dims: list[int | str | None] = []
    for n, wire, _, a, b in w.fields(buf, lo, hi):
        if n != w.TENSOR_SHAPE or wire != 2:
            continue
        for dn, dw, _, da, db in w.fields(buf, a, b):
            if dn != w.SHAPE_DIM or dw != 2:
                continue
            dim: int | str | None = None
            for fn, fw, _, fa, fb in w.fields(buf, da, db):
                if fn == w.DIM_VALUE and fw == 0:
                    dim = w.varint(buf, fa)[0]
                elif fn == w.DIM_PARAM and fw == 2:
                    dim = w.string(buf, fa, fb)
            dims.append(dim)
    return dims


def _initializer_name(buf, lo: int, hi: int) -> str | None:
    # A tensor's name (field 8) comes before its raw_data (9) in serialization order; stop
    # there rather than walk past megabytes of weights.
    for n, wire, _, a, b in w.fields(buf, lo, hi):
        if n == w.TENSOR_NAME and wire == 2:
            return w.string(buf, a, b)
        if n == w.TENSOR_RAW_DATA:
            return None
    return None


def parse_header(buf) -> Header:
    """The header of the ModelProto in ``buf`` (bytes, memoryview or mmap);
    ``onnx_wire.Corrupt`` if it is not one."""
    metadata: dict[str, str] = {}
    graph = None
    for n, wire, _, a, b in w.fields(buf):
        if n == w.MODEL_GRAPH and wire == 2:
            graph = (a, b)
        elif n == w.MODEL_METADATA and wire == 2:
            key, value = w.entry(buf, a, b)
            metadata[key] = value
    if graph is None:
        raise w.Corrupt("no graph")
    inputs, outputs, weights = [], [], set()
    for n, wire, _, a, b in w.fields(buf, *graph):
        if wire != 2:
            continue
        if n == w.GRAPH_INPUT:
            inputs.append(_port(buf, a, b))
        elif n == w.GRAPH_OUTPUT:
            outputs.append(_port(buf, a, b))
        elif n == w.GRAPH_INITIALIZER:
            weights.add(_initializer_name(buf, a, b))
    # Old IRs list initializers among the inputs; onnxruntime shows only the real ones.
    return Header(metadata, [p for p in inputs if p.name not in weights], outputs)


def read_header(path: str | os.PathLike[str]) -> Header:
    """A model file's header; ModelFileError (one line) for anything that is not ONNX."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise ModelFileError(f"{path}: not a loadable ONNX model (the file is empty)")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                try:
                    return parse_header(m)  # slices of an mmap are bytes: nothing to release
                except w.Corrupt as e:
                    raise ModelFileError(f"{path}: not a loadable ONNX model ({e})") from None
    except OSError as e:
        raise ModelFileError(f"cannot read model file {path}: {e.strerror or e}") from None


def read_spec(path: str | os.PathLike[str], kind: str | None = None) -> ModelSpec:
    """The simx spec of a model file, checked against its graph's inputs and outputs,
    without building an inference session. ``kind`` ("image" or "text"): refuse the other
    kind first, with the fix, before the shapes are compared."""
    path = Path(path)
    header = read_header(path)
    try:
        spec = read_spec_from_metadata(header.metadata, where=str(path))
    except SpecError as e:
        raise ModelFileError(f"{path}: {e}") from None
    if kind is not None:
        check_kind(path, spec, kind)
    check_io(path, spec, header)
    return spec
