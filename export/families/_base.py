"""The interface every model family implements, and the helpers they share.

Why a base class: export code (``families.build``, ``api``, the catalogue generator)
asks a family for its catalogue entries, its torch module (a :class:`Built`) and its
library versions, and never branches on the family's name. A family is one module
holding one ``Family`` subclass; ``families/__init__.py`` lists them in ``FAMILIES``.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from simx.model.spec import PreprocessSpec

if TYPE_CHECKING:  # torch is imported by the builders only, when an export runs
    from torch import nn

    from simx.model.catalogue import ModelEntry


@dataclass
class Built:
    """A torch module ready to export, and the facts about it the spec records: an
    ``nn.Module`` mapping float32 pixels [B, 3, S, S] to the embedding the reference code
    produces, its weights label, preprocessing and output normalisation."""

    module: nn.Module
    weights: str  # "pretrained" | "random" | "sha256:<hex>"
    preprocess: PreprocessSpec
    normalize: bool
    extra: dict[str, Any] = field(default_factory=dict)


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


# ---- random-weight recipes -------------------------------------------------------------
# Default inits leave most towers nearly linear in the image: every layer shrinks its
# input (PyTorch's Linear/Conv default has gain 1/sqrt(3)), attention with tiny q.k is
# uniform averaging, LayerScale at 1e-5 switches branches off, fresh BatchNorm statistics
# let ReLU means pile up. Distinct photos then differ only in their mean colour, or not
# at all. The recipe below is LSUV's idea (Mishkin & Matas 2016, "All you need is a good
# init") done in one forward pass: each layer, in execution order, is rescaled so its
# output has unit variance on a seeded batch of synthetic images.

CALIBRATION_SEED = 7
CALIBRATION_BATCH = 8


def calibration_images(size: int, n: int = CALIBRATION_BATCH, seed: int = CALIBRATION_SEED):
    """Seeded, data-independent photo-like inputs: Gaussian noise summed over octaves
    (4 px to full resolution), so neighbouring pixels correlate as in photos, then each
    image standardised as a normalised photo is. No real photo is involved, so the probe
    photos that judge collapse stay unseen."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 3, size, size)
    s = 4
    while s < size:
        x += F.interpolate(torch.randn(n, 3, s, s, generator=g), size=(size, size),
                           mode="bilinear", align_corners=False)
        s *= 4
    x += 0.25 * torch.randn(n, 3, size, size, generator=g)
    x = x - x.mean(dim=(1, 2, 3), keepdim=True)
    return x / x.std(dim=(1, 2, 3), keepdim=True)


def layer_scale_to_one(module: nn.Module) -> int:
    """Set every LayerScale ``gamma`` (timm's LayerScale/LayerScale2d, 1e-5 or 1e-6 at
    init) to 1.0, as DINOv2's ``init_values=1.0`` does; returns how many were set."""
    import torch

    n = 0
    with torch.no_grad():
        for m in module.modules():
            gamma = getattr(m, "gamma", None)
            if "LayerScale" in type(m).__name__ and isinstance(gamma, torch.nn.Parameter):
                gamma.fill_(1.0)
                n += 1
    return n


class _UnitGain:
    """One pass of LSUV: forward hooks that scale each layer, the first time it runs, so its
    output has standard deviation ``target`` (see ``unit_gain_calibration``)."""

    def __init__(self, centre: bool, target: float) -> None:
        self.centre, self.target = centre, target
        self.done: set[int] = set()
        self.scaled = 0

    def gain(self, y) -> float | None:
        s = float(y.detach().double().std())
        return self.target / s if s > 1e-8 else None

    @staticmethod
    def scale_(weight, bias, f: float, rows: slice = slice(None)) -> None:
        weight[rows] *= f
        if bias is not None:
            bias[rows] *= f

    def centre_(self, bias, out, channel_dim: int):
        """Shift the bias so each output channel has mean 0 on the batch (LSUV's
        "orthonormal" step does the same for data variance): the mean of a nonlinearity
        (GELU, ReLU) otherwise becomes one constant vector every image shares."""
        if bias is None or not self.centre:
            return out
        dims = [d for d in range(out.ndim) if d != channel_dim % out.ndim]
        mu = out.detach().mean(dim=dims)
        bias -= mu
        shape = [1] * out.ndim
        shape[channel_dim] = -1
        return out - mu.reshape(shape)

    def layer_hook(self, m: nn.Module, _inp, out):
        import torch

        if id(m) in self.done or not isinstance(out, torch.Tensor):
            return None
        self.done.add(id(m))
        out = self.centre_(None if m.bias is None else m.bias.data, out,
                           -1 if isinstance(m, torch.nn.Linear) else 1)
        f = self.gain(out)
        if f is None:
            return out
        self.scale_(m.weight.data, None if m.bias is None else m.bias.data, f)
        self.scaled += 1
        return out * f

    def mha_pre(self, m: nn.Module, args, kwargs):
        import torch.nn.functional as F

        if id(m) in self.done or m.in_proj_weight is None:
            return None
        q, k, v = (kwargs.get(n, a) for n, a in zip(("query", "key", "value"),
                                                      list(args) + [None] * 3))
        d = m.embed_dim
        for i, x in enumerate((q, k, v)):
            rows = slice(i * d, (i + 1) * d)
            b = None if m.in_proj_bias is None else m.in_proj_bias[rows]
            f = self.gain(F.linear(x, m.in_proj_weight[rows], b))
            if f is not None:
                self.scale_(m.in_proj_weight.data, None if m.in_proj_bias is None
                            else m.in_proj_bias.data, f, rows)
        return None

    def mha_hook(self, m: nn.Module, _inp, out):
        if id(m) in self.done:
            return None
        self.done.add(id(m))
        op = m.out_proj
        y = self.centre_(None if op.bias is None else op.bias.data, out[0], -1)
        f = self.gain(y)
        if f is None:
            return (y, *out[1:])
        self.scale_(op.weight.data, None if op.bias is None else op.bias.data, f)
        self.scaled += 1
        return (y * f, *out[1:])


def unit_gain_calibration(module: nn.Module, images, centre: bool = True,
                          target: float = 1.0) -> int:
    """LSUV in one pass: while ``module`` runs on ``images``, each Linear and Conv (and
    nn.MultiheadAttention's q/k/v and output projections, which it applies functionally)
    is scaled, the first time it runs, so its output has unit standard deviation; the
    scaled output is what the next layer sees, so one forward equals LSUV's layer-by-layer
    sweep. Only scalar gains change: the graph and every other weight stay as they are.
    Returns the number of layers scaled."""
    import torch

    u = _UnitGain(centre, target)
    handles = []
    mhas = [m for m in module.modules() if isinstance(m, torch.nn.MultiheadAttention)]
    inside_mha = {id(m.out_proj) for m in mhas}
    for m in module.modules():
        if isinstance(m, torch.nn.MultiheadAttention):
            handles.append(m.register_forward_pre_hook(u.mha_pre, with_kwargs=True))
            handles.append(m.register_forward_hook(u.mha_hook))
        elif isinstance(m, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d)) \
                and id(m) not in inside_mha:
            handles.append(m.register_forward_hook(u.layer_hook))
    try:
        _forward(module, images, train=False)
    finally:
        for h in handles:
            h.remove()
    return u.scaled


def recalibrate_batchnorm(module: nn.Module, images) -> int:
    """Replace every BatchNorm's running statistics by those of ``images`` (train-mode
    forward, cumulative average), as one does after any re-initialisation; fresh
    statistics (mean 0, var 1) let ReLU means grow layer after layer until one positive
    direction dominates. Returns the number of BatchNorm layers recalibrated."""
    import torch

    norms = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    momenta = [bn.momentum for bn in norms]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the calibration batch
    try:
        _forward(module, images, train=True)
    finally:
        for bn, mom in zip(norms, momenta):
            bn.momentum = mom
    return len(norms)


def _forward(module: nn.Module, images, train: bool) -> None:
    """One forward of ``images`` without gradients, in train mode (BatchNorm layers then
    record statistics) or eval mode; the module's own mode is restored after."""
    import torch

    was_training = module.training
    module.train(train)
    try:
        with torch.no_grad():
            module(images)
    finally:
        module.train(was_training)


#: LSUV's target standard deviation. 1.0 (LSUV's own) still left PE-Core's coffee and
#: chelsea photos at cosine 0.987 at 2 blocks: at unit scale GELU is nearly linear, and a
#: mean-pooled near-linear tower sees only the mean colour. 2.0 puts pre-activations in
#: the nonlinear range (0.945 then); see timm_clip.py for the figures.
CALIBRATION_STD = 2.0


def calibrate_random_tower(module: nn.Module, image_size: int, target: float = CALIBRATION_STD) -> dict[str, int]:
    """The shared random-weight recipe of the OpenCLIP ViT and timm-tower families:
    LayerScale to 1.0, BatchNorm statistics from the calibration batch, then one-pass LSUV
    (centred, ``target`` std) on the same seeded synthetic batch. Deterministic: the
    module's seeded init plus ``CALIBRATION_SEED``. Skipped on the meta device (a module
    built only to list its classes has no values to calibrate). Returns what it touched."""
    if any(p.is_meta for p in module.parameters()):
        return {}
    images = calibration_images(image_size)
    return {
        "layer_scale": layer_scale_to_one(module),
        "batchnorm": recalibrate_batchnorm(module, images),
        "lsuv": unit_gain_calibration(module, images, centre=True, target=target),
    }


def tower_size(module: nn.Module, default: int = 224) -> int:
    """The square input size an open_clip visual tower was built for."""
    size = getattr(module, "image_size", default)
    return int(size[0] if isinstance(size, (tuple, list)) else size)
