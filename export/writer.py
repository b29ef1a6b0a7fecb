"""Writing an ONNX file atomically: ``AtomicModelWriter``, and what decides its layout.

Files over protobuf's 2 GB limit (DINOv2-giant, ViT-H-14) keep their weights in
``<name>.onnx.data`` next to the model. Both files are written under temporary names in
the output folder, fsynced, and renamed into place only after verification, so a failed
or interrupted export leaves no file behind. Used by the image and the text export; needs
onnx, not torch.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from types import TracebackType

import onnx

from simx.core.errors import SimxError, first_line
from simx.core.fs import fsync_dir, fsync_path
from simx.model.weights_hash import weights_sha256

# protobuf refuses to serialise a message of 2 GiB or more; leave room for the graph.
EXTERNAL_DATA_THRESHOLD = 2**31 - 64 * 2**20


class ExportError(SimxError):
    """torch.onnx.export failed, or produced a graph simx cannot use or write."""


def tensor_bytes(model: onnx.ModelProto) -> int:
    """Bytes of initializer data in ``model`` (what decides external data)."""
    total = 0
    for t in model.graph.initializer:
        if t.HasField("raw_data"):
            total += len(t.raw_data)
        else:
            total += 4 * (len(t.float_data) + len(t.int32_data)) + 8 * (
                len(t.int64_data) + len(t.double_data)
            )
    return total


def set_metadata(model: onnx.ModelProto, key: str, value: str) -> None:
    """Set one ``metadata_props`` entry, replacing an earlier one with the same key."""
    keep = [(p.key, p.value) for p in model.metadata_props if p.key != key]
    del model.metadata_props[:]
    for k, v in keep:
        model.metadata_props.add(key=k, value=v)
    model.metadata_props.add(key=key, value=value)


def _initializers(graph: onnx.GraphProto) -> list[onnx.TensorProto]:
    """Initializers of ``graph`` and of every subgraph inside its nodes."""
    out = list(graph.initializer)
    for node in graph.node:
        for attr in node.attribute:
            subgraphs = ([attr.g] if attr.HasField("g") else []) + list(attr.graphs)
            for g in subgraphs:
                out.extend(_initializers(g))
    return out


def _umask_mode() -> int:
    """0o666 minus the process umask: what a plain open() would have given the file."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def check_committed_weights(path: Path, expected: str | None) -> None:
    """The committed file's weights hash is the one its spec records (else the runtime
    would refuse the file at open); a mismatch removes the file."""
    if expected and weights_sha256(path) != expected:
        path.unlink(missing_ok=True)
        path.with_name(path.name + ".data").unlink(missing_ok=True)
        raise ExportError(f"{path.name}: the written weights differ from those verified; "
                          "nothing was kept, please report this")


class AtomicModelWriter:
    """Write ``final`` (and ``final.data`` for external data) atomically.

    Usage::

        with AtomicModelWriter(path, external) as w:
            tmp = w.write(model)        # loadable by onnx / onnxruntime under a temp name
            ...verify tmp...
            ...add metadata to model...
            w.commit(model)             # write again, fsync, rename into place

    Leaving the block without ``commit`` (an exception included) deletes the temp files.
    The external-data location recorded in the committed ``.onnx`` is the final
    ``<name>.onnx.data``, so the pair can be moved together.
    """

    def __init__(self, final: Path, external: bool) -> None:
        self.final = Path(final)
        self.external = external
        self.final_data = self.final.with_name(self.final.name + ".data")
        folder = self.final.parent
        # Hidden temp names in the same folder (so the rename is atomic); the model's ends
        # in .onnx so the runtime's loader accepts it during verification.
        fd, name = tempfile.mkstemp(prefix=f".{self.final.stem}.", suffix=".tmp.onnx", dir=folder)
        os.close(fd)
        self.tmp = Path(name)
        self.tmp_data: Path | None = None
        if external:
            fd, name = tempfile.mkstemp(prefix=f".{self.final.stem}.", suffix=".tmp.data", dir=folder)
            os.close(fd)
            self.tmp_data = Path(name)
        mode = _umask_mode()  # mkstemp makes 0600 files; the model should be readable like any
        for p in (self.tmp, self.tmp_data):
            if p is not None:
                os.chmod(p, mode)
        self._data_written = False
        self._committed = False

    def __enter__(self) -> AtomicModelWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._committed:
            self.discard()

    def write(self, model: onnx.ModelProto) -> Path:
        """Serialise ``model`` to the temp path; returns it.

        With external data the tensors go to the temp data file the first time; the
        model proto keeps references to it, so later writes (metadata) rewrite only the
        small ``.onnx``.
        """
        if self.external and not self._data_written:
            from onnx.external_data_helper import (
                convert_model_to_external_data,
                write_external_data_tensors,
            )

            assert self.tmp_data is not None
            convert_model_to_external_data(
                model, all_tensors_to_one_file=True, location=self.tmp_data.name, size_threshold=1024
            )
            write_external_data_tensors(model, str(self.tmp.parent))
            self._data_written = True
        try:
            with open(self.tmp, "wb") as f:
                f.write(model.SerializeToString())
        except ValueError as e:  # protobuf: message too large
            raise ExportError(f"cannot serialise {self.final.name}: {first_line(e)}") from None
        return self.tmp

    def _point_data_at(self, model: onnx.ModelProto, location: str) -> None:
        for t in _initializers(model.graph):
            for entry in t.external_data:
                if entry.key == "location":
                    entry.value = location

    def commit(self, model: onnx.ModelProto) -> Path:
        """Write ``model`` a last time, fsync, and rename into place; returns the final path."""
        if self.external:
            assert self.tmp_data is not None
            self._point_data_at(model, self.final_data.name)
        self.write(model)
        fsync_path(self.tmp)
        if self.external:
            assert self.tmp_data is not None
            fsync_path(self.tmp_data)
            os.replace(self.tmp_data, self.final_data)
        os.replace(self.tmp, self.final)
        if not self.external and self.final_data.exists():
            # A stale .data from an earlier external-data export of the same name.
            self.final_data.unlink()
        fsync_dir(self.final.parent)
        self._committed = True
        return self.final

    def discard(self) -> None:
        for p in (self.tmp, self.tmp_data):
            if p is not None:
                try:
                    p.unlink()
                except FileNotFoundError:
                    pass
