"""The model catalogue: lookups, error messages, QuickGELU tags, preprocessing that agrees
with open_clip's own config, and ``simx models``."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from simx import registry
from simx.cli import main as cli
from simx.registry import UnknownModelError

OPENCLIP = [e for e in registry.MODELS.values() if e.family == "openclip"]
DINOV2 = [e for e in registry.MODELS.values() if e.family == "dinov2"]


def test_catalogue_holds_what_the_issue_asks_for():
    ids = set(registry.MODELS)
    for v in ("small", "base", "large", "giant"):
        assert {f"dinov2-{v}", f"dinov2-{v}-reg"} <= ids
    for model, tag in [("ViT-B-32", "laion2b_s34b_b79k"), ("ViT-B-16", "laion2b_s34b_b88k"),
                       ("ViT-L-14", "laion2b_s32b_b82k"), ("ViT-H-14", "laion2b_s32b_b79k"),
                       ("ViT-B-32", "openai"), ("ViT-B-16", "openai"), ("ViT-L-14", "openai")]:
        e = registry.openclip(model, tag)
        assert e.id == f"openclip-{model.lower()}-{tag}"
        assert e.source == f"open_clip:{model}/{tag}"


def test_lookups():
    e = registry.dinov2("small")
    assert (e.id, e.dim, e.patch_size, e.registers) == ("dinov2-small", 384, 14, False)
    assert e.source == "timm:vit_small_patch14_dinov2.lvd142m"
    r = registry.dinov2("giant", registers=True)
    assert r.id == "dinov2-giant-reg" and r.source == "timm:vit_giant_patch14_reg4_dinov2.lvd142m"
    assert registry.get("openclip-vit-b-32-laion2b_s34b_b79k") is registry.openclip(
        "ViT-B-32", "laion2b_s34b_b79k")


@pytest.mark.parametrize(
    "call, names",
    [
        (lambda: registry.get("dinov2-tiny"), ["dinov2-small", "openclip-vit-h-14-laion2b_s32b_b79k"]),
        (lambda: registry.dinov2("tiny"), ["small", "base", "large", "giant"]),
        (lambda: registry.openclip("ViT-Q-7", "openai"), ["ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-H-14"]),
        (lambda: registry.openclip("ViT-B-32", "nope"), ["laion2b_s34b_b79k", "openai", "laion400m_e32"]),
    ],
    ids=["id", "variant", "model", "tag"],
)
def test_failed_lookup_lists_valid_names(call, names):
    with pytest.raises(UnknownModelError) as err:
        call()
    msg = str(err.value)
    assert "\n" not in msg
    for n in names:
        assert n in msg
    assert not msg.startswith("'")  # not KeyError's quoted repr


def test_quick_gelu_tags():
    assert registry.openclip("ViT-B-32", "openai").quick_gelu
    assert registry.openclip("ViT-B-16", "openai").quick_gelu
    assert registry.openclip("ViT-L-14", "openai").quick_gelu
    assert registry.openclip("ViT-B-32", "laion400m_e32").quick_gelu
    assert not registry.openclip("ViT-B-32", "laion2b_s34b_b79k").quick_gelu
    assert not registry.openclip("ViT-H-14", "laion2b_s32b_b79k").quick_gelu
    assert registry.needs_quick_gelu("ViT-B-16", "metaclip_400m")
    assert registry.needs_quick_gelu("ViT-H-14", "dfn5b")
    assert not registry.needs_quick_gelu("ViT-B-16", "laion400m_e32")


@pytest.mark.parametrize("entry", OPENCLIP, ids=lambda e: e.id)
def test_openclip_entries_agree_with_open_clip(entry):
    """Registry data vs open_clip's own model config and PreprocessCfg (no weights needed)."""
    import open_clip
    from simx.export.sources import openclip_preprocess, preprocess_from_openclip

    cfg = open_clip.get_model_config(entry.variant)
    assert cfg["embed_dim"] == entry.dim
    assert cfg["vision_cfg"]["patch_size"] == entry.patch_size
    assert cfg["vision_cfg"]["image_size"] == entry.default_size
    tag_cfg = open_clip.get_pretrained_cfg(entry.variant, entry.pretrained)
    assert tag_cfg, f"open_clip has no tag {entry.pretrained} for {entry.variant}"
    # QuickGELU: the registry rule must agree with what open_clip records for the tag.
    assert bool(tag_cfg.get("quick_gelu", False)) == entry.quick_gelu
    for size in (entry.default_size, entry.default_size + 2 * entry.patch_size):
        ours = entry.preprocess(size)
        theirs = preprocess_from_openclip(openclip_preprocess(entry.variant, entry.pretrained, size))
        assert ours == theirs
    # The parameter count is counted from open_clip's own model, not copied from the code.
    import torch

    with torch.device("meta"):  # no memory, no init time
        m = open_clip.model.CLIP(**cfg, quick_gelu=entry.quick_gelu)
    params = sum(p.numel() for p in m.visual.parameters()) / 1e6
    assert abs(params - entry.params_m) / entry.params_m < 0.01, (entry.id, params)


@pytest.mark.parametrize("entry", [e for e in DINOV2 if not e.registers], ids=lambda e: e.id)
def test_dinov2_entries_agree_with_timm(entry):
    import torch
    import timm
    for e in (entry, registry.dinov2(entry.variant, registers=True)):
        assert timm.is_model(e.source_name.split(".")[0])
        with torch.device("meta"):  # no memory, no init time
            m = timm.create_model(e.source_name, num_classes=0, img_size=518)
        assert m.num_features == e.dim
        assert m.patch_embed.patch_size == (e.patch_size, e.patch_size)
        assert (getattr(m, "reg_token", None) is not None) == e.registers
        params = sum(p.numel() for p in m.parameters()) / 1e6
        assert abs(params - e.params_m) / e.params_m < 0.01, (e.id, params)


def test_dinov2_preprocess_scales_with_size():
    e = registry.dinov2("base")
    p = e.preprocess()
    assert (p.resize, p.crop, p.interpolation) == (256, 224, "bicubic")
    assert (e.preprocess(448).resize, e.preprocess(448).crop) == (512, 448)
    assert e.preprocess(518).resize == round(518 * 256 / 224)
    with pytest.raises(ValueError, match="multiple"):
        e.preprocess(225)


def test_models_command_table():
    r = CliRunner().invoke(cli, ["models"])
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].split()[:5] == ["id", "family", "dim", "params", "input"]
    body = {ln.split()[0]: ln for ln in lines[2:]}
    assert set(body) == set(registry.MODELS)
    assert "384" in body["dinov2-small"] and "resize 256 bicubic -> crop 224" in body["dinov2-small"]
    assert "QuickGELU" in body["openclip-vit-b-32-openai"]
    assert "QuickGELU" not in body["openclip-vit-b-32-laion2b_s34b_b79k"]


def test_models_command_json():
    r = CliRunner().invoke(cli, ["models", "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert [row["id"] for row in rows] == list(registry.MODELS)
    by_id = {row["id"]: row for row in rows}
    small = by_id["dinov2-small"]
    assert (small["dim"], small["input_size"], small["family"]) == (384, 224, "dinov2")
    assert small["preprocess"] == {"resize": 256, "resize_mode": "shortest", "interpolation": "bicubic",
                                   "crop": 224, "mean": [0.485, 0.456, 0.406],
                                   "std": [0.229, 0.224, 0.225]}
    assert by_id["openclip-vit-l-14-openai"]["quick_gelu"] is True
    h14 = "openclip-vit-h-14-laion2b_s32b_b79k"  # the count itself is checked against open_clip above
    assert by_id[h14]["params_m"] == registry.get(h14).params_m
