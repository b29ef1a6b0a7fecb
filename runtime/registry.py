"""The model catalogue, as data.

Each entry says where a model comes from (timm or open_clip), what it outputs and
how its input must be prepared. Export builds models from it; the runtime only
shows it (``simx models``) and never needs it to run a file, because every
exported file carries its own spec.

Adding a variant touches this file only: one line in ``_DINOV2`` or ``_OPENCLIP``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import SimxError
from .spec import PreprocessSpec

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)
# Tags whose open_clip PreprocessCfg normalizes with 0.5/0.5 instead of OpenAI's values
# (a test checks every entry against open_clip.get_pretrained_cfg).
_INCEPTION_NORM = {("ViT-L-14", "laion2b_s32b_b82k")}


class UnknownModelError(SimxError, KeyError, ValueError):
    """A name that is not in the catalogue; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass(frozen=True)
class ModelEntry:
    id: str
    family: str  # "dinov2" | "openclip"
    variant: str  # "small" | "ViT-B-32" ...
    source: str  # "timm:<name>" | "open_clip:<model>/<tag>"
    dim: int
    params_m: float  # parameters of the exported (image) tower, millions
    patch_size: int
    default_size: int
    registers: bool = False
    pretrained: str | None = None  # open_clip tag
    quick_gelu: bool = False
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @property
    def source_name(self) -> str:
        return self.source.split(":", 1)[1]

    @property
    def export_command(self) -> str:
        """The ``simx export`` line that writes this model."""
        if self.family == "dinov2":
            return f"simx export dinov2 --variant {self.variant}" + (" --registers" if self.registers else "")
        return f"simx export openclip --model {self.variant} --pretrained {self.pretrained}"

    def preprocess(self, image_size: int | None = None) -> PreprocessSpec:
        """The reference eval transform at ``image_size`` (default: the model's own)."""
        size = image_size or self.default_size
        if size % self.patch_size:
            raise ValueError(
                f"image size {size} is not a multiple of {self.id}'s patch size {self.patch_size}"
            )
        if self.family == "dinov2":
            # DINOv2's official eval transform: Resize(256, bicubic) -> CenterCrop(224),
            # scaled for other sizes. timm's data config (518, crop 1.0) is not used.
            resize = int(round(size * 256 / 224))
        else:
            # open_clip image_transform with resize_mode="shortest": Resize(S) -> CenterCrop(S).
            resize = size
        return PreprocessSpec(
            resize=resize,
            resize_mode="shortest",
            interpolation="bicubic",
            crop=size,
            mean=self.mean,
            std=self.std,
        )


def _dinov2(variant: str, dim: int, params_m: float, registers: bool) -> ModelEntry:
    reg = "_reg4" if registers else ""
    return ModelEntry(
        id=f"dinov2-{variant}" + ("-reg" if registers else ""),
        family="dinov2",
        variant=variant,
        source=f"timm:vit_{variant}_patch14{reg}_dinov2.lvd142m",
        dim=dim,
        params_m=params_m,
        patch_size=14,
        default_size=224,
        registers=registers,
    )


# Tags whose weights were trained with QuickGELU; building them with nn.GELU gives
# silently wrong features.
def needs_quick_gelu(model: str, tag: str) -> bool:
    return (
        tag == "openai"
        or tag.startswith(("metaclip", "dfn"))
        or (model == "ViT-B-32" and tag.startswith("laion400m"))
    )


def _openclip(model: str, tag: str, dim: int, params_m: float, patch: int) -> ModelEntry:
    return ModelEntry(
        id=f"openclip-{model.lower()}-{tag}",
        family="openclip",
        variant=model,
        source=f"open_clip:{model}/{tag}",
        dim=dim,
        params_m=params_m,
        patch_size=patch,
        default_size=224,
        pretrained=tag,
        quick_gelu=needs_quick_gelu(model, tag),
        mean=INCEPTION_MEAN if (model, tag) in _INCEPTION_NORM else OPENAI_MEAN,
        std=INCEPTION_STD if (model, tag) in _INCEPTION_NORM else OPENAI_STD,
    )


_DINOV2 = [
    ("small", 384, 22.1),
    ("base", 768, 86.6),
    ("large", 1024, 304.4),
    ("giant", 1536, 1136.5),
]

# (model, tag, embed dim, visual-tower params in millions, patch size)
_OPENCLIP = [
    ("ViT-B-32", "laion2b_s34b_b79k", 512, 88.2, 32),
    ("ViT-B-32", "openai", 512, 88.2, 32),
    ("ViT-B-32", "laion400m_e32", 512, 88.2, 32),
    ("ViT-B-16", "laion2b_s34b_b88k", 512, 86.2, 16),
    ("ViT-B-16", "openai", 512, 86.2, 16),
    ("ViT-L-14", "laion2b_s32b_b82k", 768, 303.97, 14),
    ("ViT-L-14", "openai", 768, 303.97, 14),
    ("ViT-H-14", "laion2b_s32b_b79k", 1024, 632.08, 14),
]

MODELS: dict[str, ModelEntry] = {}
for _v, _d, _p in _DINOV2:
    for _r in (False, True):
        _e = _dinov2(_v, _d, _p, _r)
        MODELS[_e.id] = _e
for _m, _t, _d, _p, _ps in _OPENCLIP:
    _e = _openclip(_m, _t, _d, _p, _ps)
    MODELS[_e.id] = _e


def _choices(names: list[str]) -> str:
    return ", ".join(sorted(names))


def get(model_id: str) -> ModelEntry:
    """Look up a model by id; an unknown id lists the valid ones."""
    try:
        return MODELS[model_id]
    except KeyError:
        raise UnknownModelError(
            f"unknown model {model_id!r}; valid ids: {_choices(list(MODELS))}"
        ) from None


def dinov2(variant: str, registers: bool = False) -> ModelEntry:
    variants = [e.variant for e in MODELS.values() if e.family == "dinov2" and not e.registers]
    if variant not in variants:
        raise UnknownModelError(
            f"unknown DINOv2 variant {variant!r}; valid variants: {_choices(variants)}"
        )
    return get(f"dinov2-{variant}" + ("-reg" if registers else ""))


def openclip(model: str, pretrained: str) -> ModelEntry:
    entries = [e for e in MODELS.values() if e.family == "openclip"]
    models = sorted({e.variant for e in entries})
    if model not in models:
        raise UnknownModelError(f"unknown OpenCLIP model {model!r}; valid models: {_choices(models)}")
    tags = [e.pretrained for e in entries if e.variant == model]
    if pretrained not in tags:
        raise UnknownModelError(
            f"unknown pretrained tag {pretrained!r} for {model}; valid tags: {_choices(tags)}"
        )
    return get(f"openclip-{model.lower()}-{pretrained}")
