"""ResNet-CLIP: open_clip's ModifiedResNet towers (RN50, RN101, RN50x4 ... from OpenAI,
YFCC15M, CC12M). Output: ``encode_image`` (attention pooling), not normalized.

The input size must be a multiple of the total stride, 32.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ._openclip import OpenClipFamily


class ResnetClip(OpenClipFamily):
    name = "openclip-resnet"
    kind = "resnet"

    def size_multiple(self, model_cfg: dict[str, Any], visual: nn.Module | None) -> int:
        return 32

    def randomize(self, module: nn.Module) -> None:
        pass
