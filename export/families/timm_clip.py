"""timm-tower CLIP: open_clip models whose image tower is a timm trunk (SigLIP, SigLIP2,
EVA, PE-Core, MobileCLIP, MobileCLIP2, ViTamin, ConvNeXt ...). Output: ``encode_image``
(trunk, pooling and projection as open_clip's TimmModel runs them), not normalized.

The input size must be a multiple of the trunk's patch size (ViT-like trunks) or of its
total stride (convolutional ones), read from the timm model.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ._base import calibrate_random_tower, tower_size
from ._openclip import OpenClipFamily


class TimmClip(OpenClipFamily):
    name = "openclip-timm"
    kind = "timm"

    def size_multiple(self, model_cfg: dict[str, Any], visual: nn.Module | None) -> int | None:
        if visual is None:
            return None
        trunk = getattr(visual, "trunk", visual)
        # The last feature map's total stride: the patch size of a plain ViT, and the right
        # multiple for hybrids (ViTamin, MobileCLIP-B) whose patch embed follows a conv stem.
        info = getattr(trunk, "feature_info", None)
        if info:
            return int(info[-1]["reduction"])
        patch = getattr(getattr(trunk, "patch_embed", None), "patch_size", None)
        if patch is not None:
            return int(patch[0] if isinstance(patch, (tuple, list)) else patch)
        return 32

    def randomize(self, module: nn.Module) -> None:
        calibrate_random_tower(module, tower_size(module))
