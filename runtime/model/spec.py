"""The spec an exported model carries in its ONNX ``metadata_props["simx"]``.

The runtime reads everything it needs from this one JSON document: how to
preprocess, what comes out, whether to L2-normalize, what the export measured.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from simx.core.errors import ModelFileError

METADATA_KEY = "simx"
SCHEMA_VERSION = 1
_REQUIRED = ("id", "family", "variant", "source", "weights", "image_size", "dim", "normalize",
             "preprocess")


class SpecError(ModelFileError, ValueError):
    """A model file whose simx metadata is missing or malformed."""


RESIZE_MODES = ("longest", "shortest", "squash")
INTERPOLATIONS = ("bicubic", "bilinear")


def _size(value: Any, what: str) -> int | tuple[int, int]:
    """An int, or a (height, width) pair; a square pair is folded to its int.

    Folding is what open_clip does too (``image_transform`` treats ``(s, s)`` as ``s``), and
    it keeps the JSON, and so the spec hash, of every square spec as it always was.
    """
    if isinstance(value, bool):
        raise SpecError(f"{what} {value!r} is not a size")
    if isinstance(value, (list, tuple)):
        if len(value) == 1:
            value = value[0]
        elif len(value) == 2:
            h, w = (_size(v, what) for v in value)
            if not (isinstance(h, int) and isinstance(w, int)):
                raise SpecError(f"{what} {value!r} is not a size")
            return h if h == w else (h, w)
        else:
            raise SpecError(f"{what} {value!r} is not an int or a (height, width) pair")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    elif isinstance(value, numbers.Integral):  # numpy integers from a config
        value = int(value)
    if not isinstance(value, int):
        raise SpecError(f"{what} {value!r} is not an int or a (height, width) pair")
    if value <= 0:
        raise SpecError(f"{what} {value} is not a positive size")
    return value


def size_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    """(height, width) of an int or (h, w) size."""
    return (size, size) if isinstance(size, int) else (size[0], size[1])


@dataclass(frozen=True)
class PreprocessSpec:
    """The eval transform: Resize(resize, resize_mode, interpolation) -> CenterCrop(crop) -> Normalize.

    ``resize`` and ``crop`` are an int (square) or (height, width). ``resize_mode`` is
    ``shortest`` (torchvision's Resize(int)), ``longest`` (open_clip's ResizeKeepRatio then
    CenterCropOrPad with ``fill``) or ``squash`` (both sides to the target); the exact
    arithmetic of each is in simx.images.preprocess. ``fill`` (0-255) is the padding colour of
    ``longest``; the other modes' references pad with 0, so they require fill 0.
    """

    resize: int | tuple[int, int]
    crop: int | tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize_mode: str = "shortest"
    interpolation: str = "bicubic"
    fill: int = 0

    def __post_init__(self) -> None:
        if self.resize_mode not in RESIZE_MODES:
            raise SpecError(f"unsupported resize_mode {self.resize_mode!r} "
                            f"(one of {', '.join(RESIZE_MODES)})")
        if self.interpolation not in INTERPOLATIONS:
            raise SpecError(f"unsupported interpolation {self.interpolation!r} "
                            f"(one of {', '.join(INTERPOLATIONS)})")
        object.__setattr__(self, "resize", _size(self.resize, "resize"))
        object.__setattr__(self, "crop", _size(self.crop, "crop"))
        rh, rw = size_hw(self.resize)
        ch, cw = size_hw(self.crop)
        if ch > rh or cw > rw:
            raise SpecError(f"crop {self.crop} is larger than resize {self.resize}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise SpecError("mean and std need three values (RGB)")
        object.__setattr__(self, "mean", tuple(float(x) for x in self.mean))
        object.__setattr__(self, "std", tuple(float(x) for x in self.std))
        if not all(math.isfinite(x) for x in (*self.mean, *self.std)):
            raise SpecError(f"mean {self.mean} / std {self.std} are not all finite numbers")
        if min(self.std) <= 0:
            raise SpecError(f"std {self.std} has a value <= 0: the pixels would divide by zero")
        if (isinstance(self.fill, bool) or not isinstance(self.fill, numbers.Integral)
                or not 0 <= self.fill <= 255):
            raise SpecError(f"fill {self.fill!r} is not a uint8 level (0-255)")
        object.__setattr__(self, "fill", int(self.fill))
        if self.fill and self.resize_mode != "longest":
            raise SpecError(f"fill {self.fill} needs resize_mode 'longest' (the "
                            f"{self.resize_mode!r} reference pads with 0)")

    @property
    def crop_hw(self) -> tuple[int, int]:
        """(height, width) of the model input."""
        return size_hw(self.crop)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form. Keys added after schema 1's first files (``fill``) appear only when
        they differ from their default, so every older spec keeps its JSON and its hash."""
        d: dict[str, Any] = {
            "resize": self.resize if isinstance(self.resize, int) else list(self.resize),
            "crop": self.crop if isinstance(self.crop, int) else list(self.crop),
            "mean": list(self.mean),
            "std": list(self.std),
            "resize_mode": self.resize_mode,
            "interpolation": self.interpolation,
        }
        if self.fill:
            d["fill"] = self.fill
        return d

    @classmethod
    def from_dict(cls, pre: dict[str, Any]) -> PreprocessSpec:
        return cls(
            resize=pre["resize"],
            crop=pre["crop"],
            mean=tuple(pre["mean"]),
            std=tuple(pre["std"]),
            resize_mode=pre.get("resize_mode", "shortest"),
            interpolation=pre.get("interpolation", "bicubic"),
            fill=pre.get("fill", 0),
        )


@dataclass(frozen=True)
class ModelSpec:
    id: str
    family: str
    variant: str
    source: str
    weights: str  # "pretrained" | "random" | "sha256:<hex>"
    image_size: int
    dim: int
    normalize: bool  # whether the runtime L2-normalizes the output
    preprocess: PreprocessSpec
    precision: str = "fp32"  # "fp32" | "fp16" | "int8"
    opset: int = 18
    input_name: str = "pixel_values"
    output_name: str = "embeddings"
    parity: dict[str, float] = field(default_factory=dict)  # max_abs, min_cosine, ...
    gflops: float | None = None  # per image
    fusions: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    schema: int = SCHEMA_VERSION
    # sha256 of the file's weights and graph (simx.model.weights_hash), recorded at export and
    # checked when the file opens; None in files exported before simx recorded it.
    weights_sha256: str | None = None

    # -- serialisation -----------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["preprocess"] = self.preprocess.to_dict()
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        if not isinstance(d, dict):
            raise SpecError("simx metadata is not a JSON object")
        if d.get("schema", SCHEMA_VERSION) > SCHEMA_VERSION:
            raise SpecError(
                f"simx metadata schema {d['schema']} is newer than this simx understands "
                f"({SCHEMA_VERSION}); upgrade simx"
            )
        names = {f.name for f in fields(cls)}
        missing = [n for n in _REQUIRED if n not in d]
        if missing:
            raise SpecError(f"simx metadata lacks {', '.join(missing)}")
        try:
            pre = d["preprocess"]
            kwargs = {k: v for k, v in d.items() if k in names}
            if not isinstance(pre, dict):
                raise SpecError("malformed simx metadata: preprocess is not an object")
            kwargs["preprocess"] = PreprocessSpec.from_dict(pre)
            spec = cls(**kwargs)
        except SpecError:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise SpecError(f"malformed simx metadata: {e}") from None
        if spec.preprocess.crop_hw != size_hw(_size(spec.image_size, "image_size")):
            raise SpecError(
                f"simx metadata: crop {spec.preprocess.crop} != image_size {spec.image_size}"
            )
        if not isinstance(spec.dim, int) or isinstance(spec.dim, bool) or spec.dim <= 0:
            raise SpecError(f"simx metadata: dim {spec.dim!r} is not a positive integer")
        if spec.normalize is not True:
            # Search scores are cosines of unit vectors; a file whose output the runtime must
            # not normalize would give scores that are not comparable with any cache.
            raise SpecError(f"simx metadata: normalize {spec.normalize!r} is not supported "
                            "(simx caches hold L2-normalized vectors)")
        if spec.weights_sha256 is not None and not (
                isinstance(spec.weights_sha256, str) and len(spec.weights_sha256) == 64):
            raise SpecError("simx metadata: weights_sha256 is not a sha256 hex digest")
        return spec

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise SpecError(f"simx metadata is not valid JSON: {e}") from None
        return cls.from_dict(d)

    # -- identity ----------------------------------------------------------------
    def embedding_hash(self) -> str:
        """A hash of everything that changes the numbers a model produces.

        Caches store it; a cache written by a model with another hash is refused,
        because mixing its rows would silently compare apples with oranges.
        """
        d = self.to_dict()
        keep = ("id", "source", "weights", "image_size", "dim", "normalize", "preprocess",
                "precision")
        if self.weights_sha256:  # absent in older files: their caches keep their hash
            keep += ("weights_sha256",)
        blob = json.dumps({k: d[k] for k in keep}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def read_spec_from_metadata(meta: dict[str, str], where: str = "model") -> ModelSpec:
    """Parse the simx spec out of an ONNX custom metadata map."""
    if METADATA_KEY not in meta:
        raise SpecError(
            f"{where} has no simx metadata (key {METADATA_KEY!r}); export it with `simx export`"
        )
    return ModelSpec.from_json(meta[METADATA_KEY])
