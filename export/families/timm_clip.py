"""timm-tower CLIP: open_clip models whose image tower is a timm trunk (SigLIP, SigLIP2,
EVA, PE-Core, MobileCLIP, MobileCLIP2, ViTamin, ConvNeXt ...). Output: ``encode_image``
(trunk, pooling and projection as open_clip's TimmModel runs them), not normalized.

The input size must be a multiple of the trunk's patch size (ViT-like trunks) or of its
total stride (convolutional ones), read from the timm model.

Random weights: what collapses, measured (median pairwise cosine over the 8 skimage
photos of tests/test_families.py / max over the parity gate's 4 photos, verify.PHOTOS;
the gate refuses >= 0.98):

* MobileCLIP / MobileCLIP2 (FastViT-MCi): 40 LayerScale gammas at 1e-5 switch every
  branch off, and fresh BatchNorm statistics let ReLU/GELU means pile up: MobileCLIP2-S0
  full depth 1.000 / 1.000, MobileCLIP-S1 1.000 / 1.000.
* PE-Core: not one embedding for all, but near-linear: attention-pooled tokens of a tower
  whose layers all shrink their input see little more than the mean colour; coffee and
  chelsea (both brown) reach 0.993 (PE-Core-T, 2 blocks; median 0.45). Their mean-pooled
  final tokens measured 0.974 while the centred tokens measured -0.06.
* MobileCLIP-B (ViT with a conv stem): 0.932 / 0.994 at 2 blocks.

The recipe (``_base.calibrate_random_tower``, shared with ViT-CLIP): LayerScale to 1.0,
BatchNorm statistics from a seeded synthetic photo-like batch, then one-pass LSUV on that
batch (each Linear/Conv, in execution order, re-scaled to output std 2 with its bias
centring each channel). LSUV's own std 1 was not enough for PE-Core (0.987 at 2 blocks,
centred): GELU is nearly linear there. Figures with the recipe:

=====================================  ===============  ===============
tower (random weights)                 default init     this recipe
=====================================  ===============  ===============
MobileCLIP2-S0, full (20 blocks)       1.000 / 1.000    0.812 / 0.890
MobileCLIP2-S0, 2 blocks per stage     -                0.760 / 0.846
MobileCLIP2-S0, 1 block per stage      -                0.954 / 0.983 (refused)
MobileCLIP-S1, full (40 blocks)        1.000 / 1.000    0.569 / 0.835
MobileCLIP-B, 2 of 12 blocks           0.932 / 0.994    0.917 / 0.971 (narrow)
MobileCLIP-B, 12 blocks                -                0.887 / 0.965
PE-Core-T-16-384, 2 of 12 blocks       0.454 / 0.993    0.282 / 0.945
PE-Core-T-16-384, 12 blocks            0.339 / 0.990    0.281 / 0.910
PE-Core-B-16, 2 of 12 blocks           0.417 / 0.991    0.301 / 0.933
SigLIP2 ViT-B-16, 2 blocks             0.452 / 0.915    0.321 / 0.809
EVA02-B-16, 2 blocks                   0.153 / 0.750    0.208 / 0.477
ViTamin-S, 2 blocks                    0.702 / 0.932    0.104 / 0.607
ConvNeXt-base-w-320, full              0.241 / 0.838    0.224 / 0.807
=====================================  ===============  ===============

(2 cores shared with other jobs; figures are from ``export``-time builds at each tag's
own size, before ONNX: the graph is the same, only weight values change.)
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
