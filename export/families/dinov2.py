"""DINOv2 (timm ``vit_*_patch14[_reg4]_dinov2``): the LayerNorm'd CLS token.

Names come from ``timm.list_pretrained('*dinov2*')``. Preprocessing is DINOv2's official
eval transform, Resize(256, bicubic) -> CenterCrop(224) -> ImageNet mean/std, scaled for
other sizes; timm's data config (518, crop 1.0) describes the training size, not the eval.
Random weights: LayerScale at 1.0 (timm's 1e-5 makes every image one embedding).
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from simx.model.catalogue import IMAGENET_MEAN, IMAGENET_STD

from ..weights import (RANDOM_SEED, WeightsError, load_into_meta_built, read_checkpoint,
                       timm_pretrained_state)
from ._base import Built, Family, count_params, entry_row

if TYPE_CHECKING:
    from simx.model.catalogue import ModelEntry

_NAME = re.compile(r"^vit_(?P<variant>[a-z_]+?)_patch(?P<patch>\d+)(?P<reg>_reg4)?_dinov2$")
EVAL_SIZE, EVAL_RESIZE = 224, 256
# DINOv2 checkpoints hold the position grid of their 518-px training resolution.
DINOV2_GRID = 37


def bake_pos_embed(
    patch_pos: torch.Tensor, grid: int, *, antialias: bool, offset: float
) -> torch.Tensor:
    """Resize a [1, M*M, D] patch position grid to [1, grid*grid, D] the official way.

    This is ``DinoVisionTransformer.interpolate_pos_encoding`` from facebookresearch/dinov2,
    done once at export time instead of on every forward: non-register hub models use
    ``scale_factor=(g + 0.1) / M`` without antialias, register models ``size=(g, g)``
    with antialias. The result is bit-identical to the official forward and the graph has
    no Resize node. timm resamples differently when it loads official checkpoints, so the
    position grid is always taken at its original size and resized here.
    """
    n, dim = patch_pos.shape[1], patch_pos.shape[2]
    m = math.isqrt(n)
    if m * m != n:
        raise ValueError(f"pos_embed has {n} patch positions, not a square grid")
    if m == grid:  # the official forward returns pos_embed unchanged here
        return patch_pos
    kwargs: dict[str, Any] = {}
    if offset:
        s = float(grid + offset) / m
        kwargs["scale_factor"] = (s, s)
    else:
        kwargs["size"] = (grid, grid)
    p = F.interpolate(
        patch_pos.float().reshape(1, m, m, dim).permute(0, 3, 1, 2),
        mode="bicubic",
        antialias=antialias,
        **kwargs,
    )
    assert p.shape[-2:] == (grid, grid), p.shape
    return p.permute(0, 2, 3, 1).reshape(1, grid * grid, dim).to(patch_pos.dtype)


def official_dinov2_to_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official DINOv2 key layout -> timm's, as timm's ``_convert_dinov2`` does.

    Register models become timm ``no_embed_class`` models: the class position is folded
    into ``cls_token`` (the same single add the official forward does) and ``pos_embed``
    keeps the patch grid only. SwiGLU ``w12`` / ``w3`` become ``fc1`` / ``fc2``.
    """
    out: dict[str, torch.Tensor] = {}
    state = dict(state)
    state.pop("mask_token", None)
    if "register_tokens" in state:
        out["reg_token"] = state.pop("register_tokens")
        out["cls_token"] = state.pop("cls_token") + state["pos_embed"][:, 0]
        out["pos_embed"] = state.pop("pos_embed")[:, 1:]
    for k, v in state.items():
        # Training checkpoints built with block_chunks > 0 name blocks "blocks.<chunk>.<i>.".
        k = re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", k)
        k = k.replace(".mlp.w12.", ".mlp.fc1.").replace(".mlp.w3.", ".mlp.fc2.")
        out[k] = v
    return out


def timm_dinov2(name: str, image_size: int, **kw: Any) -> nn.Module:
    import timm

    return timm.create_model(name, num_classes=0, img_size=image_size, init_values=1.0, **kw)


class DinoV2(Family):
    name = "dinov2"
    library = "timm"
    output = "LayerNorm'd CLS token (official hub forward); runtime L2-normalizes"

    def entries(self, measure: bool = True) -> list[dict[str, Any]]:
        import timm

        rows = []
        for full in timm.list_pretrained("*dinov2*"):
            arch, tag = full.split(".", 1)
            m = _NAME.match(arch)
            if not m:
                continue
            variant, reg = m["variant"], bool(m["reg"])
            with torch.device("meta"):  # cheap enough to keep (dim comes from it)
                model = timm_dinov2(arch, 518)
            rows.append(entry_row(
                id=f"dinov2-{variant}" + ("-reg" if reg else ""),
                family=self.name, variant=variant, source=f"timm:{full}",
                dim=int(model.num_features), params_m=count_params(model) if measure else None,
                patch_size=int(m["patch"]), default_size=EVAL_SIZE, resize=EVAL_RESIZE,
                registers=reg, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                command=f"simx export dinov2 --variant {variant}" + (" --registers" if reg else ""),
            ))
        return rows

    def build(self, entry: ModelEntry, weights: str, image_size: int) -> Built:
        """Weights are obtained at the native 518-px grid (37x37), then the position grid
        is resized to ``image_size`` with the official interpolation and baked in."""
        name = entry.source_name
        grid = image_size // entry.patch_size
        native = DINOV2_GRID * entry.patch_size
        if weights == "random":
            torch.manual_seed(RANDOM_SEED)
            state = timm_dinov2(name, native).state_dict()
            label = "random"
        elif weights == "pretrained":
            state = timm_pretrained_state(name, entry.id)
            label = "pretrained"
        else:
            state, digest = read_checkpoint(weights)
            label = f"sha256:{digest}"
        if "mask_token" in state:  # the official layout (hub copies of it too)
            state = official_dinov2_to_timm(state)

        if "pos_embed" not in state:
            raise WeightsError(f"checkpoint {weights} does not fit {entry.id}: it has no pos_embed")
        pos = state["pos_embed"]
        # Register models (timm no_embed_class) hold only the patch grid; others lead with
        # the class position, which is not resized.
        prefix = 0 if entry.registers else 1
        if pos.ndim != 3 or pos.shape[1] <= prefix:
            raise WeightsError(
                f"checkpoint {weights} does not fit {entry.id}: pos_embed {tuple(pos.shape)}")
        try:
            baked = bake_pos_embed(pos[:, prefix:], grid, antialias=entry.registers,
                                   offset=0.0 if entry.registers else 0.1)
        except ValueError as e:  # e.g. a plain checkpoint for a register model
            raise WeightsError(f"checkpoint {weights} does not fit {entry.id}: {e}") from None
        state = dict(state)
        state["pos_embed"] = torch.cat([pos[:, :prefix], baked], dim=1)
        model = load_into_meta_built(lambda: timm_dinov2(name, image_size), state, entry.id,
                                     str(weights))
        del state
        return Built(
            module=model,
            weights=label,
            preprocess=entry.preprocess(image_size),
            # The CLS token is LayerNorm'd, not unit length; retrieval compares by cosine,
            # so the runtime L2-normalizes it (the file's output stays the official one).
            normalize=True,
            extra={
                "output": self.output,
                "pos_embed": f"37x37 -> {grid}x{grid} "
                + ("size, antialias" if entry.registers else "scale (g+0.1)/37, no antialias"),
            },
        )
