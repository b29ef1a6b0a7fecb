"""The model families simx exports, one module each, found by name in ``FAMILIES``.

Adding a family is one new module with a ``Family`` subclass and one line here; adding a
tag or variant touches no file (the catalogue comes from the libraries, see
``scripts/make_catalogue.py``).
"""

from __future__ import annotations

from typing import Any

from simx.core.errors import SimxError

from ._base import Family
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
