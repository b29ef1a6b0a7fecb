"""The protobuf wire format, as much of it as reading an ONNX file needs (no ``onnx`` import:
the runtime does not depend on it). Field numbers are onnx.proto3's."""

from __future__ import annotations

from collections.abc import Iterator

# ModelProto
MODEL_IR_VERSION, MODEL_GRAPH, MODEL_METADATA = 1, 7, 14
# GraphProto
GRAPH_INITIALIZER, GRAPH_INPUT, GRAPH_OUTPUT = 5, 11, 12
# TensorProto
TENSOR_NAME, TENSOR_RAW_DATA, TENSOR_EXTERNAL_DATA, TENSOR_DATA_LOCATION = 8, 9, 13, 14
# StringStringEntryProto (metadata_props, external_data)
ENTRY_KEY, ENTRY_VALUE = 1, 2
# ValueInfoProto -> TypeProto -> TypeProto.Tensor -> TensorShapeProto -> Dimension
VALUE_NAME, VALUE_TYPE = 1, 2
TYPE_TENSOR = 1
TENSOR_ELEM_TYPE, TENSOR_SHAPE = 1, 2
SHAPE_DIM = 1
DIM_VALUE, DIM_PARAM = 1, 2


class Corrupt(Exception):
    """Bytes that are not a protobuf message."""


def varint(buf: memoryview, pos: int) -> tuple[int, int]:
    """(value, position after it) of the base-128 varint at ``pos``."""
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise Corrupt("truncated varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7


def fields(buf, lo: int = 0, hi: int | None = None) -> Iterator[tuple[int, int, int, int, int]]:
    """(field number, wire type, start of the whole field, start of its payload, end) of the
    message in ``buf[lo:hi]``, offsets into ``buf``. ``buf`` is anything indexable by byte
    (bytes, a memoryview, an mmap), so a big file is walked without copying it."""
    pos, hi = lo, len(buf) if hi is None else hi
    while pos < hi:
        start = pos
        key, pos = varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, end = varint(buf, pos)
        elif wire == 1:
            end = pos + 8
        elif wire == 2:
            n, pos = varint(buf, pos)
            end = pos + n
        elif wire == 5:
            end = pos + 4
        else:
            raise Corrupt(f"wire type {wire}")
        if end > hi:
            raise Corrupt("field runs past the end")
        yield number, wire, start, pos, end
        pos = end


def string(buf, a: int, b: int) -> str:
    return bytes(buf[a:b]).decode("utf-8", "replace")


def entry(buf, a: int, b: int) -> tuple[str, str]:
    """A StringStringEntryProto at ``buf[a:b]``: (key, value)."""
    kv = {k: string(buf, x, y) for k, w, _, x, y in fields(buf, a, b) if w == 2}
    return kv.get(ENTRY_KEY, ""), kv.get(ENTRY_VALUE, "")
