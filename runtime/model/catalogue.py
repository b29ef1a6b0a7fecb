"""The model catalogue, as data: ``catalogue.json``, a snapshot of what the libraries offer.

Each entry says where a model comes from (timm or open_clip), its family (the export
module that builds it), what it outputs and how its input must be prepared. Export
builds models from it; the runtime only shows it (``simx models``) and never needs it to
run a file, because every exported file carries its own spec.

The snapshot is written by ``scripts/make_catalogue.py`` from open_clip's
``list_pretrained()`` and configs and timm's DINOv2/DINOv3 names (the runtime cannot
import either); a test checks it equals what the installed libraries list. Adding a tag
touches no file here.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from simx.core.errors import SimxError
from simx.model.spec import PreprocessSpec

CATALOGUE_PATH = Path(__file__).with_name("catalogue.json")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class UnknownModelError(SimxError, KeyError, ValueError):
    """A name that is not in the catalogue; the message lists the closest and valid names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass(frozen=True)
class ModelEntry:
    id: str
    family: str  # a key of simx.export.families.FAMILIES: "dinov2", "openclip-vit", ...
    variant: str  # "small" | "ViT-B-32" ...
    source: str  # "timm:<name>" | "open_clip:<model>/<tag>"
    dim: int
    params_m: float  # parameters of the exported (image) tower, millions
    patch_size: int  # the input size must be a multiple of this (patch, or total stride)
    default_size: int
    resize: int  # the resize size at default_size; scaled in proportion for other sizes
    command: str  # the ``simx export`` line that writes this model
    registers: bool = False
    pretrained: str | None = None  # open_clip tag, or timm's pretrained tag for DINOv3
    quick_gelu: bool = False  # as open_clip records it for the tag
    qkvb: bool = False  # DINOv3 with q/k/v biases
    text: bool = False  # whether simx exports its text tower (open_clip TextTransformer)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resize_mode: str = "shortest"
    interpolation: str = "bicubic"

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> ModelEntry:
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in row.items() if k in names}
        kw["mean"], kw["std"] = tuple(row["mean"]), tuple(row["std"])
        return cls(**kw)

    @property
    def source_name(self) -> str:
        return self.source.split(":", 1)[1]

    @property
    def export_command(self) -> str:
        """The ``simx export`` line that writes this model."""
        return self.command

    def size_ok(self, size: int) -> bool:
        """A positive multiple of the patch size, or the model's own size (SigLIP-384 has
        patch 14: its conv patch embed drops the last 6 pixels, as in training)."""
        return size > 0 and (size % self.patch_size == 0 or size == self.default_size)

    def preprocess(self, image_size: int | None = None) -> PreprocessSpec:
        """The reference eval transform at ``image_size`` (default: the model's own).

        The resize keeps its ratio to the crop (DINO: 256/224; OpenCLIP: 1).
        """
        size = image_size or self.default_size
        if not self.size_ok(size):
            raise ValueError(
                f"image size {size} is not a multiple of {self.id}'s patch size {self.patch_size}"
            )
        resize = size if self.resize == self.default_size else int(
            round(size * self.resize / self.default_size))
        return PreprocessSpec(
            resize=resize,
            resize_mode=self.resize_mode,
            interpolation=self.interpolation,
            crop=size,
            mean=self.mean,
            std=self.std,
        )


def load_catalogue(path: Path = CATALOGUE_PATH) -> dict[str, ModelEntry]:
    """id -> entry, in the snapshot's order (families, then open_clip's own order)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SimxError(f"cannot read the model catalogue {path}: {e}") from None
    return {row["id"]: ModelEntry.from_row(row) for row in doc["models"]}


MODELS: dict[str, ModelEntry] = load_catalogue()


def families() -> list[str]:
    return sorted({e.family for e in MODELS.values()})


def _choices(names: list[str]) -> str:
    return ", ".join(sorted(names))


def _unknown(what: str, name: str, valid: list[str], kind: str) -> UnknownModelError:
    """The error for an unknown name: the closest matches first, then all valid ones."""
    close = difflib.get_close_matches(name, valid, n=5, cutoff=0.6)
    near = f"closest: {', '.join(close)}; " if close else ""
    what, _, where = what.partition(" for ")
    where = f" for {where}" if where else ""
    return UnknownModelError(
        f"unknown {what} {name!r}{where}; {near}valid {kind}: {_choices(valid)}")


def get(model_id: str) -> ModelEntry:
    """Look up a model by id; an unknown id names the closest and lists the valid ones."""
    try:
        return MODELS[model_id]
    except KeyError:
        raise _unknown("model", model_id, list(MODELS), "ids") from None


def dinov2(variant: str, registers: bool = False) -> ModelEntry:
    variants = [e.variant for e in MODELS.values() if e.family == "dinov2" and not e.registers]
    if variant not in variants:
        raise _unknown("DINOv2 variant", variant, variants, "variants")
    return get(f"dinov2-{variant}" + ("-reg" if registers else ""))


def dinov3(variant: str, qkvb: bool = False, tag: str | None = None) -> ModelEntry:
    entries = [e for e in MODELS.values() if e.family == "dinov3"]
    variants = sorted({e.variant for e in entries})
    if variant not in variants:
        raise _unknown("DINOv3 variant", variant, variants, "variants")
    have = [e for e in entries if e.variant == variant and e.qkvb == qkvb]
    tags = [e.pretrained for e in have if e.pretrained]
    if not have:
        other = "without" if qkvb else "with"
        raise UnknownModelError(f"DINOv3 {variant} exists only {other} --qkvb in timm")
    if tag is None:
        tag = "lvd1689m" if "lvd1689m" in tags else tags[0]
    if tag not in tags:
        raise _unknown(f"DINOv3 {variant} tag", tag, tags, "tags")
    return next(e for e in have if e.pretrained == tag)


def openclip(model: str, pretrained: str) -> ModelEntry:
    entries = [e for e in MODELS.values() if e.source.startswith("open_clip:")]
    models = sorted({e.variant for e in entries})
    if model not in models:
        raise _unknown("OpenCLIP model", model, models, "models")
    tags = [e.pretrained for e in entries if e.variant == model]
    if pretrained not in tags:
        raise _unknown(f"pretrained tag for {model}", pretrained, tags, "tags")
    return get(f"openclip-{model.lower()}-{pretrained}")
