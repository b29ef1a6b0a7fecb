"""The model catalogue: the committed snapshot equals what open_clip and timm list, lookups
and their error messages, QuickGELU as open_clip records it, preprocessing that agrees
with open_clip's own config, and ``simx models``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from simx.model import catalogue
from simx.cli.app import main as cli
from simx.model.catalogue import UnknownModelError
from simx.model.spec import PreprocessSpec

OPENCLIP = [e for e in catalogue.MODELS.values() if e.source.startswith("open_clip:")]
DINOV2 = [e for e in catalogue.MODELS.values() if e.family == "dinov2"]
# A few entries per CLIP family whose numbers are rebuilt from open_clip's own model.
SAMPLE = ["openclip-vit-b-32-laion2b_s34b_b79k", "openclip-vit-b-32-openai",
          "openclip-vit-h-14-laion2b_s32b_b79k", "openclip-rn50-openai",
          "openclip-vit-b-16-siglip2-256-webli", "openclip-coca_vit-b-32-laion2b_s13b_b90k"]


def _make_catalogue():
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    import make_catalogue

    return make_catalogue


def test_snapshot_equals_what_the_libraries_list():
    """runtime/model/catalogue.json is what scripts/make_catalogue.py writes from the installed
    open_clip and timm: every pair of open_clip.list_pretrained(), every timm DINO name,
    with their configs. (Fields that need each tower built, parameter counts and a timm
    trunk's stride, are compared in the slow test below.)"""
    import open_clip
    import timm

    from simx.export.families import catalogue as list_exportable
    from simx.export.weights import quiet_logging

    with quiet_logging():
        fresh = list_exportable(measure=False)
    committed = json.loads(catalogue.CATALOGUE_PATH.read_text())["models"]
    assert [r["id"] for r in committed] == [r["id"] for r in fresh], (
        "runtime/model/catalogue.json is stale: run python scripts/make_catalogue.py")
    for ours, theirs in zip(committed, fresh):
        unmeasured = {k for k, v in theirs.items() if v is None and k in ("params_m", "patch_size")}
        assert {k: v for k, v in ours.items() if k not in unmeasured} == {
            k: v for k, v in theirs.items() if k not in unmeasured}, ours["id"]
    pairs = {(e.variant, e.pretrained) for e in OPENCLIP}
    assert pairs == set(open_clip.list_pretrained()) and len(pairs) == len(OPENCLIP)
    timm_names = {e.source_name for e in catalogue.MODELS.values() if e.source.startswith("timm:")}
    assert set(timm.list_pretrained("*dinov2*")) <= timm_names
    assert set(timm.list_pretrained("vit_*_dinov3*")) <= timm_names


@pytest.mark.slow
def test_snapshot_equals_the_generator_output_exactly():
    make_catalogue = _make_catalogue()
    assert catalogue.CATALOGUE_PATH.read_text() == make_catalogue.render(make_catalogue.snapshot())


def test_catalogue_holds_what_the_issue_asks_for():
    ids = set(catalogue.MODELS)
    for v in ("small", "base", "large", "giant"):
        assert {f"dinov2-{v}", f"dinov2-{v}-reg"} <= ids
    for v in ("small", "small-plus", "base", "large", "huge-plus"):
        assert {f"dinov3-{v}", f"dinov3-{v}-qkvb"} <= ids
    for model, tag in [("ViT-B-32", "laion2b_s34b_b79k"), ("ViT-B-16", "laion2b_s34b_b88k"),
                       ("ViT-L-14", "laion2b_s32b_b82k"), ("ViT-H-14", "laion2b_s32b_b79k"),
                       ("ViT-B-32", "openai"), ("ViT-B-16", "openai"), ("ViT-L-14", "openai")]:
        e = catalogue.openclip(model, tag)
        assert e.id == f"openclip-{model.lower()}-{tag}"
        assert e.source == f"open_clip:{model}/{tag}"
    fams = {e.family for e in catalogue.MODELS.values()}
    assert fams == {"dinov2", "dinov3", "openclip-vit", "openclip-timm", "openclip-resnet"}
    assert catalogue.get("openclip-rn50-openai").family == "openclip-resnet"
    assert catalogue.get("openclip-vit-b-16-siglip2-webli").family == "openclip-timm"
    assert catalogue.get("openclip-coca_vit-b-32-laion2b_s13b_b90k").family == "openclip-vit"


def test_lookups():
    e = catalogue.dinov2("small")
    assert (e.id, e.dim, e.patch_size, e.registers) == ("dinov2-small", 384, 14, False)
    assert e.source == "timm:vit_small_patch14_dinov2.lvd142m"
    r = catalogue.dinov2("giant", registers=True)
    assert r.id == "dinov2-giant-reg" and r.source == "timm:vit_giant_patch14_reg4_dinov2.lvd142m"
    assert catalogue.get("openclip-vit-b-32-laion2b_s34b_b79k") is catalogue.openclip(
        "ViT-B-32", "laion2b_s34b_b79k")
    d3 = catalogue.dinov3("small")
    assert (d3.id, d3.dim, d3.patch_size, d3.source) == (
        "dinov3-small", 384, 16, "timm:vit_small_patch16_dinov3.lvd1689m")
    assert catalogue.dinov3("base", qkvb=True).source == "timm:vit_base_patch16_dinov3_qkvb.lvd1689m"
    assert catalogue.dinov3("large", tag="sat493m").id == "dinov3-large-sat493m"
    assert catalogue.dinov3("huge_plus").dim == 1280


@pytest.mark.parametrize(
    "call, names",
    [
        (lambda: catalogue.get("dinov2-tiny"), ["dinov2-small", "openclip-vit-h-14-laion2b_s32b_b79k"]),
        (lambda: catalogue.dinov2("tiny"), ["small", "base", "large", "giant"]),
        (lambda: catalogue.openclip("ViT-Q-7", "openai"), ["ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-H-14"]),
        (lambda: catalogue.openclip("ViT-B-32", "nope"), ["laion2b_s34b_b79k", "openai", "laion400m_e32"]),
        (lambda: catalogue.dinov3("medium"), ["small", "small_plus", "base", "large", "huge_plus"]),
    ],
    ids=["id", "variant", "model", "tag", "dinov3-variant"],
)
def test_failed_lookup_lists_valid_names(call, names):
    with pytest.raises(UnknownModelError) as err:
        call()
    msg = str(err.value)
    assert "\n" not in msg
    for n in names:
        assert n in msg
    assert not msg.startswith("'")  # not KeyError's quoted repr


def test_failed_lookup_names_the_closest_first():
    with pytest.raises(UnknownModelError, match=r"closest: ViT-B-32-SigLIP2-256\b"):
        catalogue.openclip("ViT-B-32-SigLIP2-265", "webli")
    with pytest.raises(UnknownModelError, match=r"closest: openclip-vit-b-32-openai"):
        catalogue.get("openclip-vit-b-32-opnai")
    with pytest.raises(UnknownModelError, match="closest: small_plus"):
        catalogue.dinov3("small_pls")


def test_quick_gelu_is_what_open_clip_records_per_tag():
    """Not a prefix rule: every entry's flag is the tag's own pretrained cfg value."""
    import open_clip

    for e in OPENCLIP:
        assert e.quick_gelu == bool(open_clip.get_pretrained_cfg(e.variant, e.pretrained)
                                    .get("quick_gelu", False)), e.id
    assert catalogue.openclip("ViT-B-32", "openai").quick_gelu
    assert catalogue.openclip("ViT-B-32", "laion400m_e32").quick_gelu
    assert catalogue.openclip("ViT-B-16", "metaclip_400m").quick_gelu
    assert catalogue.openclip("ViT-H-14-quickgelu", "dfn5b").quick_gelu
    assert not catalogue.openclip("ViT-B-32", "laion2b_s34b_b79k").quick_gelu
    assert not catalogue.openclip("ViT-B-16", "laion400m_e32").quick_gelu
    assert sum(e.quick_gelu for e in OPENCLIP) == 54


@pytest.mark.parametrize("entry", [catalogue.get(i) for i in SAMPLE], ids=lambda e: e.id)
def test_openclip_entries_agree_with_open_clip(entry):
    """Catalogue data vs open_clip's own model config, PreprocessCfg and built tower."""
    import open_clip
    import torch
    from open_clip.model import _build_vision_tower
    from simx.export.families._openclip import openclip_preprocess

    cfg = open_clip.get_model_config(entry.variant)
    assert cfg["embed_dim"] == entry.dim
    assert cfg["vision_cfg"]["image_size"] == entry.default_size
    # (the entry's fields, not entry.preprocess(): squash/bilinear PreprocessSpecs need the
    # runtime's preprocessing modes, which land separately)
    theirs = openclip_preprocess(entry.variant, entry.pretrained, entry.default_size)
    assert (entry.resize, entry.default_size) == (theirs["size"], theirs["size"])
    assert (entry.mean, entry.std) == (tuple(theirs["mean"]), tuple(theirs["std"]))
    assert (entry.resize_mode, entry.interpolation) == (theirs["resize_mode"],
                                                        theirs["interpolation"])
    # The parameter count is counted from open_clip's own tower, not copied from the code.
    with torch.device("meta"):  # no memory, no init time
        m = _build_vision_tower(cfg["embed_dim"], cfg["vision_cfg"], quick_gelu=entry.quick_gelu)
    params = sum(p.numel() for p in m.parameters()) / 1e6
    assert abs(params - entry.params_m) / entry.params_m < 0.01, (entry.id, params)


def test_preprocess_from_openclip_reads_every_field_and_defaults():
    """The exporter's open_clip -> PreprocessSpec converter on its own (bit-exactness
    against open_clip's transform is in test_preprocess_modes.py)."""
    from simx.export.families._openclip import OPENAI_MEAN, OPENAI_STD, preprocess_from_openclip

    full = dict(size=256, mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6), resize_mode="squash",
                interpolation="bilinear", fill_color=0)
    assert preprocess_from_openclip(full) == PreprocessSpec(256, 256, (0.1, 0.2, 0.3),
                                                            (0.4, 0.5, 0.6), "squash", "bilinear")
    # open_clip's defaults for what a cfg leaves out; 'random' interpolation is bicubic at eval
    bare = preprocess_from_openclip({"interpolation": "random"})
    assert bare == PreprocessSpec(224, 224, OPENAI_MEAN, OPENAI_STD, "shortest", "bicubic")
    assert preprocess_from_openclip(dict(size=224, mean=0.5, std=0.25)).mean == (0.5,) * 3
    # (h, w) sizes stay (h, w); a square pair folds to its int
    assert preprocess_from_openclip(dict(size=(224, 320))).crop == (224, 320)
    assert preprocess_from_openclip(dict(size=[224, 224])).crop == 224
    # fill_color is CenterCropOrPad's padding: carried for `longest`, None means 0, and the
    # other modes (CenterCrop pads with 0) keep fill 0
    longest = dict(size=224, resize_mode="longest", interpolation="bicubic")
    assert preprocess_from_openclip({**longest, "fill_color": 128}).fill == 128
    assert preprocess_from_openclip({**longest, "fill_color": None}).fill == 0
    assert preprocess_from_openclip({**full, "fill_color": 128}).fill == 0


def test_preprocessing_modes_come_from_the_tags():
    siglip = catalogue.get("openclip-vit-so400m-14-siglip-384-webli")
    assert (siglip.default_size, siglip.resize_mode, siglip.mean) == (384, "squash", (0.5,) * 3)
    mobile = catalogue.get("openclip-mobileclip-s1-datacompdr")
    assert (mobile.interpolation, mobile.mean, mobile.std) == ("bilinear", (0.0,) * 3, (1.0,) * 3)
    assert catalogue.get("openclip-vit-l-14-laion2b_s32b_b82k").mean == (0.5,) * 3
    assert catalogue.get("openclip-vit-b-32-openai").mean == catalogue.OPENAI_MEAN


@pytest.mark.parametrize("entry", [e for e in DINOV2 if not e.registers], ids=lambda e: e.id)
def test_dinov2_entries_agree_with_timm(entry):
    import torch
    import timm
    for e in (entry, catalogue.dinov2(entry.variant, registers=True)):
        assert timm.is_model(e.source_name.split(".")[0])
        with torch.device("meta"):  # no memory, no init time
            m = timm.create_model(e.source_name, num_classes=0, img_size=518)
        assert m.num_features == e.dim
        assert m.patch_embed.patch_size == (e.patch_size, e.patch_size)
        assert (getattr(m, "reg_token", None) is not None) == e.registers
        params = sum(p.numel() for p in m.parameters()) / 1e6
        assert abs(params - e.params_m) / e.params_m < 0.01, (e.id, params)


def test_dinov2_preprocess_scales_with_size():
    e = catalogue.dinov2("base")
    p = e.preprocess()
    assert (p.resize, p.crop, p.interpolation) == (256, 224, "bicubic")
    assert (e.preprocess(448).resize, e.preprocess(448).crop) == (512, 448)
    assert e.preprocess(518).resize == round(518 * 256 / 224)
    with pytest.raises(ValueError, match="multiple"):
        e.preprocess(225)


def test_unknown_family_fails_loudly():
    from simx.export.families import FAMILIES, UnknownFamilyError, family

    assert set(FAMILIES) == set(catalogue.families())
    with pytest.raises(UnknownFamilyError, match="unknown model family 'openclip'.*dinov2"):
        family("openclip")


def test_models_command_table():
    r = CliRunner().invoke(cli, ["models"])
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].split()[:5] == ["id", "family", "dim", "params", "input"]
    body = {ln.split()[0]: ln for ln in lines[2:]}
    assert set(body) == set(catalogue.MODELS)
    assert "384" in body["dinov2-small"] and "resize 256 bicubic -> crop 224" in body["dinov2-small"]
    assert "QuickGELU" in body["openclip-vit-b-32-openai"]
    assert "QuickGELU" not in body["openclip-vit-b-32-laion2b_s34b_b79k"]
    assert body["dinov3-small"].rstrip().endswith("simx export dinov3 --variant small")
    assert "squash 384 bicubic -> crop 384, 0.5 mean/std" in body["openclip-vit-so400m-14-siglip-384-webli"]


def test_models_command_filters_and_marks_exported(tmp_path, monkeypatch):
    (tmp_path / "dinov2-small.onnx").write_bytes(b"x")
    (tmp_path / "dinov2-small-int8.onnx").write_bytes(b"x")
    (tmp_path / "not-a-model.onnx").write_bytes(b"x")
    monkeypatch.setenv("SIMX_MODELS_DIR", str(tmp_path))
    r = CliRunner().invoke(cli, ["models", "--family", "dinov2"])
    assert r.exit_code == 0, r.output
    body = {ln.split()[0]: ln.split() for ln in r.stdout.splitlines()[2:]}
    assert set(body) == {e.id for e in DINOV2}
    assert "fp32,int8" in body["dinov2-small"] and "-" in body["dinov2-base"]
    r = CliRunner().invoke(cli, ["models", "siglip2", "--json"])
    rows = json.loads(r.stdout)
    assert rows and all("siglip2" in (x["id"] + x["source"]).lower() for x in rows)
    r = CliRunner().invoke(cli, ["models", "--exported", "--json"])
    assert [(x["id"], x["exported"]) for x in json.loads(r.stdout)] == [
        ("dinov2-small", ["fp32", "int8"])]
    r = CliRunner().invoke(cli, ["models", "no-such-thing"])
    assert r.exit_code == 2 and "no model matches 'no-such-thing'" in r.stderr


def test_models_command_json():
    r = CliRunner().invoke(cli, ["models", "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert [row["id"] for row in rows] == list(catalogue.MODELS)
    by_id = {row["id"]: row for row in rows}
    small = by_id["dinov2-small"]
    assert (small["dim"], small["input_size"], small["family"]) == (384, 224, "dinov2")
    assert small["preprocess"] == {"resize": 256, "resize_mode": "shortest", "interpolation": "bicubic",
                                   "crop": 224, "mean": [0.485, 0.456, 0.406],
                                   "std": [0.229, 0.224, 0.225]}
    assert by_id["openclip-vit-l-14-openai"]["quick_gelu"] is True
    h14 = "openclip-vit-h-14-laion2b_s32b_b79k"  # the count itself is checked against open_clip above
    assert by_id[h14]["params_m"] == catalogue.get(h14).params_m
    assert by_id[h14]["command"] == "simx export openclip --model ViT-H-14 --pretrained laion2b_s32b_b79k"
