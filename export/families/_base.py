"""The interface every model family implements, and the helpers they share.

Why a base class: export code (``sources``, ``api``, the catalogue generator) asks a
family for its catalogue entries, its torch module and its library versions, and never
branches on the family's name. A family is one module holding one ``Family`` subclass;
``families/__init__.py`` lists them in ``FAMILIES``.
"""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch is imported by the builders only, when an export runs
    from torch import nn

    from simx.registry import ModelEntry

    from ..sources import Built


class Family:
    """One model family: where its names come from, how to build it, what it outputs.

    Subclasses set the class attributes and implement ``entries`` and ``build``;
    ``randomize`` is the family's recipe for random weights that keep distinct photos
    distinct (default inits collapse most families to one embedding).
    """

    name: str = ""  # the FAMILIES key, recorded as ModelEntry.family and spec.family
    library: str = ""  # "timm" | "open_clip": whose version the spec records
    output: str = ""  # what the exported graph returns, recorded in spec.extra
    tokenizer: str | None = None  # the text tokenizer simx ships for it, if any

    def entries(self, measure: bool = True) -> list[dict[str, Any]]:
        """The catalogue rows of this family, read from the installed library.

        ``measure=False`` skips building each tower on the meta device (tens of seconds
        for all of them): ``params_m``, and a size multiple only a built model knows,
        are then None.
        """
        raise NotImplementedError

    def build(self, entry: ModelEntry, weights: str, image_size: int) -> Built:
        """The torch module mapping [B, 3, S, S] pixels to the reference embedding."""
        raise NotImplementedError

    def randomize(self, module: nn.Module) -> None:
        """Adjust a seeded random module in place so that it does not collapse."""

    def versions(self) -> dict[str, str]:
        import importlib

        return {self.library: importlib.import_module(self.library).__version__}


def entry_row(**kw: Any) -> dict[str, Any]:
    """A catalogue row with every field the registry reads, defaults filled in."""
    row: dict[str, Any] = {
        "registers": False, "pretrained": None, "quick_gelu": False, "text": False,
        "resize_mode": "shortest", "interpolation": "bicubic",
    }
    row.update(kw)
    row["mean"] = [float(x) for x in row["mean"]]
    row["std"] = [float(x) for x in row["std"]]
    return row


def count_params(module: nn.Module) -> float:
    """Parameters in millions, rounded so the committed snapshot is stable."""
    return round(sum(p.numel() for p in module.parameters()) / 1e6, 2)


def median_pairwise_cosine(x: np.ndarray) -> float:
    """Median cosine over distinct pairs of rows: ~1 means the model has collapsed."""
    x64 = x.astype(np.float64)
    x64 = x64 / np.maximum(np.linalg.norm(x64, axis=1, keepdims=True), 1e-30)
    sim = x64 @ x64.T
    iu = np.triu_indices(len(x64), k=1)
    return float(statistics.median(sim[iu].tolist()))
