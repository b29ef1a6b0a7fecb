"""DINOv2 (timm ``vit_*_patch14[_reg4]_dinov2``): the LayerNorm'd CLS token.

Names come from ``timm.list_pretrained('*dinov2*')``. Preprocessing is DINOv2's official
eval transform, Resize(256, bicubic) -> CenterCrop(224) -> ImageNet mean/std, scaled for
other sizes; timm's data config (518, crop 1.0) describes the training size, not the eval.
Random weights: LayerScale at 1.0 (timm's 1e-5 makes every image one embedding).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from simx.model.catalogue import IMAGENET_MEAN, IMAGENET_STD

from ._base import Family, count_params, entry_row

if TYPE_CHECKING:
    from torch import nn

    from simx.model.catalogue import ModelEntry

    from ..sources import Built

_NAME = re.compile(r"^vit_(?P<variant>[a-z_]+?)_patch(?P<patch>\d+)(?P<reg>_reg4)?_dinov2$")
EVAL_SIZE, EVAL_RESIZE = 224, 256


def timm_dinov2(name: str, image_size: int, **kw: Any) -> nn.Module:
    import timm

    return timm.create_model(name, num_classes=0, img_size=image_size, init_values=1.0, **kw)


class DinoV2(Family):
    name = "dinov2"
    library = "timm"
    output = "LayerNorm'd CLS token (official hub forward); runtime L2-normalizes"

    def entries(self, measure: bool = True) -> list[dict[str, Any]]:
        import timm
        import torch

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
        import torch

        from ..sources import (DINOV2_GRID, RANDOM_SEED, Built, WeightsError, bake_pos_embed,
                               load_into_meta_built, official_dinov2_to_timm, read_checkpoint,
                               timm_pretrained_state)

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
            raw, digest = read_checkpoint(weights)
            state = official_dinov2_to_timm(raw) if "mask_token" in raw else raw
            label = f"sha256:{digest}"

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
