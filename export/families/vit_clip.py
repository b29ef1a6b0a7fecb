"""ViT-CLIP: open_clip's own VisionTransformer towers (OpenAI, LAION, DFN, MetaCLIP,
CoCa, ViT-bigG ...). Output: ``encode_image``, not normalized.

Random weights: open_clip's default init is kept; it measured a median pairwise cosine
of 0.73 between 8 distinct skimage photos for ViT-B-32 (0.94 reported for ViT-B-16),
under the 0.9 the tests require. No extra recipe is applied yet.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ._base import calibrate_random_tower, tower_size
from ._openclip import OpenClipFamily


class VitClip(OpenClipFamily):
    name = "openclip-vit"
    kind = "vit"

    def size_multiple(self, model_cfg: dict[str, Any], visual: nn.Module | None) -> int:
        return int(model_cfg["vision_cfg"]["patch_size"])

    def randomize(self, module: nn.Module) -> None:
        calibrate_random_tower(module, tower_size(module))

