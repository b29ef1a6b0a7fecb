"""DINOv3 (timm ``vit_*_patch16_dinov3[_qkvb]``): the CLS token after the final norm.

Names come from ``timm.list_pretrained('vit_*_dinov3*')``. The output is DINOv3's
``x_norm_clstoken``: timm's ``forward_features`` (the final LayerNorm over all tokens)
at index 0, the class token (4 register tokens follow it).

Preprocessing: DINOv3's own classification eval transform from its repository
(``dinov3/data/transforms.py``: ``make_classification_eval_transform``, Resize(256,
bicubic) -> CenterCrop(224) -> ImageNet mean/std), scaled for other sizes. Why this one
and not the repository's README example (``Resize((256, 256))``, a square squash for dense
features) nor timm's data config (256 px, crop 1.0): simx embeds whole images for
retrieval, which is what the linear and k-NN evaluations of the global CLS token use,
and it is the same policy as DINOv2, so the two families compare like for like.

RoPE: timm builds DINOv3 with ``dynamic_img_size``, recomputing the rotary sin/cos table
from the input's grid on every forward. The export is at a fixed grid, so the table is
computed once for that grid and stored as a constant (``FixedRope``): the graph holds no
sin/cos of the grid, nothing depends on the input's spatial shape, and the output is
identical to timm's dynamic forward at that size (a test checks it).

Random weights: LayerScale at 1.0 (timm's 1e-5 collapses every image to one embedding).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from simx.model.catalogue import IMAGENET_MEAN, IMAGENET_STD

from ..weights import RANDOM_SEED, load_into_meta_built, read_checkpoint, timm_pretrained_state
from ._base import Built, Family, count_params, entry_row

if TYPE_CHECKING:
    from simx.model.catalogue import ModelEntry

_NAME = re.compile(r"^vit_(?P<variant>[a-z0-9_]+?)_patch(?P<patch>\d+)_dinov3(?P<qkvb>_qkvb)?$")
EVAL_SIZE, EVAL_RESIZE = 224, 256
DEFAULT_TAG = "lvd1689m"


def timm_dinov3(name: str, image_size: int, **kw: Any) -> nn.Module:
    import timm

    # A fixed grid (no dynamic_img_size): patches come out flat, and DinoV3ClsToken gives
    # the rotary table of that grid as a constant.
    return timm.create_model(name, num_classes=0, img_size=image_size, init_values=1.0,
                             dynamic_img_size=False, **kw)


class FixedRope(nn.Module):
    """A RoPE table computed once for the export grid; stands in for timm's rope module."""

    def __init__(self, embed: torch.Tensor, grid: tuple[int, int]) -> None:
        super().__init__()
        self.register_buffer("embed", embed.detach().clone(), persistent=False)
        self.feat_shape = list(grid)  # timm's Eva asks for get_embed() when this is set

    def get_embed(self, shape: Any = None) -> torch.Tensor:
        return self.embed


class DinoV3ClsToken(nn.Module):
    """timm's DINOv3 at a fixed grid, returning the normed CLS token."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        grid = tuple(model.patch_embed.grid_size)
        with torch.no_grad():
            embed = model.rope.get_embed(shape=grid)
        model.rope = FixedRope(embed, grid)
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(pixel_values)[:, 0]


class DinoV3(Family):
    name = "dinov3"
    library = "timm"
    output = "CLS token after the final norm (x_norm_clstoken); runtime L2-normalizes"

    def entries(self, measure: bool = True) -> list[dict[str, Any]]:
        import timm

        rows = []
        for full in timm.list_pretrained("vit_*_dinov3*"):
            arch, tag = full.split(".", 1)
            m = _NAME.match(arch)
            if not m:
                continue
            variant, qkvb = m["variant"], bool(m["qkvb"])
            with torch.device("meta"):
                model = timm_dinov3(arch, EVAL_SIZE)
            rid = f"dinov3-{variant.replace('_', '-')}" + ("-qkvb" if qkvb else "")
            cmd = f"simx export dinov3 --variant {variant}" + (" --qkvb" if qkvb else "")
            if tag != DEFAULT_TAG:
                rid += f"-{tag.replace('_', '-')}"
                cmd += f" --tag {tag}"
            rows.append(entry_row(
                id=rid, family=self.name, variant=variant, source=f"timm:{full}",
                dim=int(model.num_features), params_m=count_params(model) if measure else None,
                patch_size=int(m["patch"]), default_size=EVAL_SIZE, resize=EVAL_RESIZE,
                registers=True, pretrained=tag, qkvb=qkvb, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                command=cmd,
            ))
        return rows

    def build(self, entry: ModelEntry, weights: str, image_size: int) -> Built:
        import timm.models.eva as eva

        name = entry.source_name
        arch = name.split(".", 1)[0]
        if weights == "random":
            torch.manual_seed(RANDOM_SEED)
            model = timm_dinov3(arch, image_size).eval()
            label = "random"
        else:
            if weights == "pretrained":
                state = timm_pretrained_state(name, entry.id)
                label = "pretrained"
            else:
                state, digest = read_checkpoint(weights)
                label = f"sha256:{digest}"
            if "storage_tokens" in state:  # the official DINOv3 layout -> timm's
                with torch.device("meta"):
                    ref = timm_dinov3(arch, image_size)
                state = eva.checkpoint_filter_fn(state, ref)
            # RoPE periods are a non-persistent buffer: built for real, then loaded.
            model = load_into_meta_built(lambda: timm_dinov3(arch, image_size), state, entry.id,
                                         str(weights))
        grid = image_size // entry.patch_size
        return Built(
            module=DinoV3ClsToken(model).eval(),
            weights=label,
            preprocess=entry.preprocess(image_size),
            normalize=True,
            extra={"output": self.output, "rope": f"fixed {grid}x{grid} table baked at export"},
        )
