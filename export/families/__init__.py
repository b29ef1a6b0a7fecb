"""The model families simx exports, one module each, found by name in ``FAMILIES``; and
``build``, the torch module for a catalogue entry, which its family makes.

Adding a family is one new module with a ``Family`` subclass and one line here; adding a
tag or variant touches no file (the catalogue comes from the libraries, see
``scripts/make_catalogue.py``).
"""

from __future__ import annotations

from typing import Any

from simx.core.errors import SimxError
from simx.model.catalogue import ModelEntry

from ._base import Built, Family

__all__ = ["FAMILIES", "Built", "Family", "UnknownFamilyError", "build", "catalogue",
           "check_image_size", "family"]
from .dinov2 import DinoV2
from .dinov3 import DinoV3
from .resnet_clip import ResnetClip
from .timm_clip import TimmClip
from .vit_clip import VitClip

FAMILIES: dict[str, Family] = {f.name: f for f in (
    DinoV2(), DinoV3(), VitClip(), TimmClip(), ResnetClip(),
)}


class UnknownFamilyError(SimxError, KeyError):
    """A family name no module implements (a catalogue written by another simx?)."""

    def __str__(self) -> str:
        return str(self.args[0])


def family(name: str) -> Family:
    """The family module for ``name``; an unknown name fails loudly, listing the known."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise UnknownFamilyError(
            f"unknown model family {name!r}; simx.export knows {', '.join(sorted(FAMILIES))}"
        ) from None


def catalogue(measure: bool = True) -> list[dict[str, Any]]:
    """Every family's entries, read from the installed timm and open_clip (``measure``:
    see ``Family.entries``)."""
    rows: list[dict[str, Any]] = []
    for f in FAMILIES.values():
        rows.extend(f.entries(measure))
    ids = [r["id"] for r in rows]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise SimxError(f"catalogue ids are not unique: {', '.join(dupes)}")
    return rows


def build(entry: ModelEntry, weights: str, image_size: int) -> Built:
    """The torch module for ``entry`` with the requested weights (see ``simx.export.weights``),
    in eval mode and without gradients: an ``nn.Module`` mapping float32 pixels
    [B, 3, S, S] to the embedding the reference code produces, plus what the spec needs to
    know about it (weights label, preprocessing, output normalisation)."""
    check_image_size(entry, image_size)
    built = family(entry.family).build(entry, weights, image_size)
    for p in built.module.parameters():
        p.requires_grad_(False)
    return built


def check_image_size(entry: ModelEntry, image_size: int) -> None:
    """Refuse an input size the entry's tower cannot take (not a multiple of its patch)."""
    if not entry.size_ok(image_size):
        raise SimxError(
            f"--image-size {image_size} is not a positive multiple of {entry.id}'s patch "
            f"size {entry.patch_size}"
        )
