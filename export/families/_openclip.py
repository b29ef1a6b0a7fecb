"""What the three OpenCLIP families share: names and preprocessing from open_clip's own
configs, the image tower built by ``open_clip.create_model`` with its weight loading.

The families differ in which architectures they own (how ``vision_cfg`` builds the
tower: open_clip's VisionTransformer, its ModifiedResNet, or a timm trunk), in their
random-weight recipe, and in how the size multiple is found.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from simx.core.errors import SimxError, first_line
from simx.model.spec import PreprocessSpec

from ..weights import (RANDOM_SEED, WeightsError, hub_download, is_torchscript, quiet_logging,
                       read_checkpoint)
from ._base import Built, Family, count_params, entry_row

if TYPE_CHECKING:
    from collections.abc import Callable

    from simx.model.catalogue import ModelEntry


def tower_kind(model_cfg: dict[str, Any]) -> str:
    """Which family owns an open_clip model config: "timm", "resnet" or "vit"."""
    vision = model_cfg["vision_cfg"]
    if vision.get("timm_model_name"):
        return "timm"
    if isinstance(vision.get("layers"), (list, tuple)):
        return "resnet"
    return "vit"


def openclip_preprocess(model: str, tag: str, image_size: int) -> dict[str, Any]:
    """open_clip's own PreprocessCfg for ``model``/``tag`` at ``image_size``, as a dict.

    Built the way ``open_clip.create_model`` builds it (defaults, then the tag's
    pretrained config, then the visual tower's size) but without touching any weights,
    so random-weight exports describe the same preprocessing as real ones.
    """
    import open_clip
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    cfg = asdict(PreprocessCfg())
    tag_cfg = open_clip.get_pretrained_cfg(model, tag)
    if not tag_cfg:
        raise SimxError(f"open_clip {open_clip.__version__} has no pretrained tag {tag!r} for {model}")
    cfg = merge_preprocess_dict(cfg, tag_cfg)
    cfg["size"] = image_size
    return cfg


#: open_clip's OPENAI_DATASET_MEAN / STD: its defaults for a cfg that names none.
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def preprocess_from_openclip(cfg: dict[str, Any]) -> PreprocessSpec:
    """The PreprocessSpec of an open_clip ``PreprocessCfg`` as a dict (``asdict(cfg)``,
    ``openclip_preprocess``'s, or a model's ``visual.preprocess_cfg``): the tag's eval
    transform is ``resize = crop = size`` (an int, or (height, width)).

    Missing keys take open_clip's defaults; ``interpolation='random'`` means bicubic at
    eval. ``fill_color`` is the padding of ``CenterCropOrPad``, which only
    ``resize_mode='longest'`` uses (None means 0, as in ``image_transform``); the other
    modes' CenterCrop pads with 0, so their spec keeps fill 0.
    """
    size = cfg.get("size", 224)
    mean = cfg.get("mean") or OPENAI_MEAN
    std = cfg.get("std") or OPENAI_STD
    mode = cfg.get("resize_mode") or "shortest"
    interpolation = cfg.get("interpolation") or "bicubic"
    return PreprocessSpec(
        resize=size,
        crop=size,
        mean=tuple(mean) if isinstance(mean, (list, tuple)) else (mean,) * 3,
        std=tuple(std) if isinstance(std, (list, tuple)) else (std,) * 3,
        resize_mode=mode,
        interpolation="bicubic" if interpolation == "random" else interpolation,
        fill=int(cfg.get("fill_color") or 0) if mode == "longest" else 0,
    )


def _hf_text(model_name: str) -> bool:
    """Whether open_clip builds this model's text tower from a Hugging Face config (nllb,
    roberta, xlm-roberta): ``create_model`` then needs the hub even for random weights."""
    import open_clip.factory

    cfg = open_clip.factory.get_model_config(model_name) or {}
    return bool(cfg.get("text_cfg", {}).get("hf_model_name"))


def _random_visual(model_name: str, image_size: int, quick_gelu: bool) -> nn.Module:
    """The visual tower alone, built by open_clip's own ``_build_vision_tower`` from the
    model config as ``create_model`` would (image size and QuickGELU forced the same way),
    for random weights of models whose text tower needs the Hugging Face hub. The tower
    is built first in ``create_model`` too, so the seeded init is the same."""
    import open_clip.factory
    from open_clip.model import _build_vision_tower

    cfg = open_clip.factory.get_model_config(model_name)
    vision_cfg = dict(cfg["vision_cfg"])
    vision_cfg["image_size"] = image_size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _build_vision_tower(cfg["embed_dim"], vision_cfg,
                                   quick_gelu=quick_gelu or bool(cfg.get("quick_gelu")))


class OpenClipImage(nn.Module):
    """``encode_image(x)`` (not normalized) of an open_clip model, keeping only the visual
    tower. CoCa's tower returns (pooled, tokens); its ``encode_image`` keeps the pooled
    latent, so this does too."""

    def __init__(self, visual: nn.Module) -> None:
        super().__init__()
        self.visual = visual

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.visual(pixel_values)
        return out[0] if isinstance(out, (tuple, list)) else out


class OpenClipFamily(Family):
    """The image towers of ``open_clip.list_pretrained()`` whose config ``kind`` owns."""

    kind: str = ""
    library = "open_clip"
    output = "encode_image (not normalized); runtime L2-normalizes"

    def size_multiple(self, model_cfg: dict[str, Any], visual: nn.Module | None) -> int | None:
        """The input size must be a multiple of this (patch size, or total stride); None
        when only the built ``visual`` would tell."""
        return int(model_cfg["vision_cfg"].get("patch_size", 32))

    def entries(self, measure: bool = True) -> list[dict[str, Any]]:
        import open_clip
        from open_clip.model import _build_vision_tower

        rows = []
        built: dict[tuple[str, bool], tuple[float, int]] = {}
        for model, tag in open_clip.list_pretrained():
            cfg = open_clip.get_model_config(model)
            if cfg is None or tower_kind(cfg) != self.kind:
                continue
            tag_cfg = open_clip.get_pretrained_cfg(model, tag)
            quick_gelu = bool(tag_cfg.get("quick_gelu", False))
            if not measure:
                built[model, quick_gelu] = (None, self.size_multiple(cfg, None))
            elif (model, quick_gelu) not in built:
                with torch.device("meta"), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    visual = _build_vision_tower(cfg["embed_dim"], cfg["vision_cfg"],
                                                 quick_gelu=quick_gelu)
                built[model, quick_gelu] = (count_params(visual), self.size_multiple(cfg, visual))
            params, multiple = built[model, quick_gelu]
            size = cfg["vision_cfg"]["image_size"]
            if isinstance(size, (list, tuple)):
                size = size[0] if size[0] == size[1] else size
            # The raw PreprocessCfg values, not a PreprocessSpec: the catalogue lists a tag
            # even where this simx's runtime cannot yet run its preprocessing.
            pre = openclip_preprocess(model, tag, size)
            text_cfg = cfg.get("text_cfg", {})
            rows.append(entry_row(
                id=f"openclip-{model.lower()}-{tag}", family=self.name, variant=model,
                source=f"open_clip:{model}/{tag}", dim=int(cfg["embed_dim"]), params_m=params,
                patch_size=multiple, default_size=int(size), resize=int(size),
                pretrained=tag, quick_gelu=quick_gelu, mean=pre["mean"], std=pre["std"],
                resize_mode=pre["resize_mode"], interpolation=pre["interpolation"],
                # encode_text of open_clip's own TextTransformer (CLIP BPE or an HF tokenizer);
                # not CoCa, nor towers built by transformers (hf_model_name: XLM-R, mT5 ...).
                text="multimodal_cfg" not in cfg and not text_cfg.get("hf_model_name"),
                command=f"simx export openclip --model {model} --pretrained {tag}",
            ))
        return rows

    def build(self, entry: ModelEntry, weights: str, image_size: int) -> Built:
        """The visual tower of an open_clip model: ``encode_image`` without normalisation."""
        model_name, tag = entry.variant, entry.pretrained
        assert tag is not None
        if weights == "random" and _hf_text(model_name):
            torch.manual_seed(RANDOM_SEED)
            visual = _random_visual(model_name, image_size, entry.quick_gelu)
            self.randomize(visual)
            label = "random"
        else:
            model, label = create_openclip(
                entry, weights, self.randomize, force_image_size=image_size,
                pretrained_image=False, pretrained_text=False)
            visual = model.visual
            del model
        pre = preprocess_from_openclip(openclip_preprocess(model_name, tag, image_size))
        ours = entry.preprocess(image_size)
        if pre != ours:
            raise SimxError(
                f"catalogue preprocessing for {entry.id} ({ours}) differs from open_clip's "
                f"({pre}); regenerate runtime/catalogue.json with scripts/make_catalogue.py"
            )
        return Built(
            module=OpenClipImage(visual).eval(),
            weights=label,
            preprocess=pre,
            normalize=True,  # encode_image is not L2-normalized; the runtime does it
            extra={"output": self.output, "quick_gelu": entry.quick_gelu},
        )


def create_openclip(entry: ModelEntry, weights: str, randomize: Callable[[nn.Module], None],
                    what: str | None = None, **kw: Any) -> tuple[Any, str]:
    """``open_clip.create_model`` for ``entry`` with the requested weights, and the spec's
    weights label; shared by the image families and the text tower export.

    ``weights``: "random" (seeded by ``RANDOM_SEED``, then ``randomize`` on the visual
    tower: the family's recipe), "pretrained" (open_clip downloads the tag; ``what`` names
    it in the offline error) or a checkpoint path, read here first for a clear error on a
    missing or unreadable file and for its digest, then loaded by open_clip with its own
    key conversions and resizing. ``kw`` goes to ``create_model`` (QuickGELU is forced as
    the entry says).
    """
    import open_clip

    kw = {"force_quick_gelu": entry.quick_gelu, **kw}
    if weights == "random":
        torch.manual_seed(RANDOM_SEED)
        with quiet_logging():
            model = open_clip.create_model(entry.variant, pretrained=None, **kw)
        randomize(model.visual)
        return model, "random"
    if weights == "pretrained":
        with hub_download(what or entry.id):
            model = open_clip.create_model(entry.variant, pretrained=entry.pretrained,
                                           require_pretrained=True, **kw)
        return model, "pretrained"
    _, digest = read_checkpoint(weights)
    with quiet_logging():
        model = open_clip.create_model(entry.variant, pretrained=None, **kw)
    jit = is_torchscript(Path(weights))
    try:
        # TorchScript archives need weights_only=False, which torch routes to
        # torch.jit.load (no arbitrary unpickling); the rest stays weights_only.
        with warnings.catch_warnings():
            if jit:  # torch's "dispatching to torch.jit.load" / "deprecated" notes
                warnings.simplefilter("ignore", (UserWarning, FutureWarning))
            open_clip.load_checkpoint(model, str(weights), weights_only=not jit)
    except Exception as e:
        raise WeightsError(f"checkpoint {weights} does not fit {entry.id}: {first_line(e)}") from None
    return model, f"sha256:{digest}"
