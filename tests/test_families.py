"""One module per family: the FAMILIES dict, DINOv3's export (fixed-grid RoPE, CLS after
the final norm) and parity, and random-weight recipes that keep distinct photos distinct.
All offline, random weights, real photos."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from simx.model import catalogue
from simx.export import api, families, verify
from simx.export.weights import RANDOM_SEED
from simx.export.families._base import median_pairwise_cosine
from simx.run.session import open_model

# Eight distinct colour photos from scikit-image (conftest PHOTO_NAMES, colour only).
PROBE = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field",
         "immunohistochemistry", "colorwheel", "stereo_motorcycle")
MAX_MEDIAN_COSINE = 0.9


def _pixels(rgb_photos, pre) -> torch.Tensor:
    from PIL import Image

    tf = verify.reference_transform(pre)
    return torch.stack([tf(Image.fromarray(rgb_photos[n]).convert("RGB")) for n in PROBE])


@pytest.fixture(scope="module")
def dinov3_small(tmp_path_factory):
    out = tmp_path_factory.mktemp("dinov3")
    return api.export_model(catalogue.dinov3("small"), weights="random", output_dir=out)


def test_dinov3_small_exports_with_parity_at_batch_1_and_3(dinov3_small, rgb_photos):
    ms = open_model(dinov3_small, provider="cpu")
    spec = ms.spec
    assert (spec.family, spec.id, spec.dim, spec.image_size) == ("dinov3", "dinov3-small", 384, 224)
    assert spec.source == "timm:vit_small_patch16_dinov3.lvd1689m"
    assert (spec.preprocess.resize, spec.preprocess.crop) == (256, 224)
    assert spec.preprocess.mean == catalogue.IMAGENET_MEAN
    # export_model's own gate ran on photos and random tensors at batch 1 and 3
    assert spec.parity["photos_min_cosine"] >= 0.99999 and spec.parity["n_images"] == 8
    built = families.build(catalogue.dinov3("small"), "random", 224)
    x = _pixels(rgb_photos, spec.preprocess).numpy()
    with torch.no_grad():
        ref = built.module(torch.from_numpy(x)).numpy()
    for b in (1, 3):
        out = np.concatenate([ms.session.run(None, {spec.input_name: x[i:i + b]})[0]
                              for i in range(0, 6, b)])
        cos = (out * ref[:6]).sum(1) / np.linalg.norm(out, axis=1) / np.linalg.norm(ref[:6], axis=1)
        assert cos.min() >= 0.99999, b
    assert median_pairwise_cosine(ref) < MAX_MEDIAN_COSINE


def test_dinov3_rope_is_baked_for_the_export_grid(dinov3_small, rgb_photos):
    """The graph computes no sin/cos of the grid, and the baked table gives what timm's
    dynamic forward gives at that size: CLS after the final norm."""
    import timm

    g = onnx.load(str(dinov3_small), load_external_data=False).graph
    ops = {n.op_type for n in g.node}
    assert not ops & {"Sin", "Cos"}, ops & {"Sin", "Cos"}
    built = families.build(catalogue.dinov3("small"), "random", 224)
    torch.manual_seed(RANDOM_SEED)
    timm_model = timm.create_model("vit_small_patch16_dinov3", num_classes=0, img_size=224,
                                   init_values=1.0).eval()
    x = _pixels(rgb_photos, catalogue.dinov3("small").preprocess())[:3]
    with torch.no_grad():
        ours = built.module(x)
        theirs = timm_model.forward_features(x)[:, 0]  # dynamic RoPE recomputed here
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["base", "large"])
def test_dinov3_base_and_large_export_with_parity(variant, tmp_path):
    path = api.export_model(catalogue.dinov3(variant), weights="random", output_dir=tmp_path)
    spec = open_model(path, provider="cpu").spec
    assert spec.parity["min_cosine"] >= 0.99999 and spec.dim == catalogue.dinov3(variant).dim


def test_families_dict_covers_the_catalogue():
    from simx.export.families import FAMILIES, Family

    for name, fam in FAMILIES.items():
        assert isinstance(fam, Family) and fam.name == name
    assert {e.family for e in catalogue.MODELS.values()} == set(FAMILIES)


def test_export_dinov3_cli_refuses_unknown_variants_in_one_line(tmp_path):
    from click.testing import CliRunner

    from simx.cli.app import main as cli

    r = CliRunner().invoke(cli, ["export", "dinov3", "--variant", "small_pls", "--output-dir",
                                 str(tmp_path / "out")])
    assert r.exit_code == 2
    assert r.stderr.count("\n") == 1 and "closest: small_plus" in r.stderr
    assert not (tmp_path / "out").exists()
    r = CliRunner().invoke(cli, ["export", "dinov3", "--variant", "tiny", "--output-dir",
                                 str(tmp_path / "out")])
    assert r.exit_code == 2 and "only with --qkvb" in r.stderr


def test_user_weights_that_collapse_warn_loudly_and_are_recorded(tmp_path):
    """timm's own random DINOv2 init (LayerScale 1e-5) collapses every photo to one
    embedding. As --weights PATH that is the user's call: the export warns, records the
    warning and the parity of the centred embeddings, and does not refuse."""
    import timm

    torch.manual_seed(0)
    m = timm.create_model("vit_small_patch14_dinov2", num_classes=0, img_size=518)
    ckpt = tmp_path / "collapsed.pth"
    torch.save(m.state_dict(), ckpt)
    lines: list[str] = []
    path = api.export_model(catalogue.dinov2("small"), weights=str(ckpt),
                            output_dir=tmp_path / "out", log=lines.append)
    spec = open_model(path, provider="cpu").spec
    assert spec.parity["collapsed"] == 1.0 and spec.parity["max_pairwise_cosine"] >= 0.98
    assert spec.parity["centred_min_cosine"] > 0.99  # parity still measured meaningfully
    assert "near-identical embeddings" in spec.extra["warning"]
    assert any(ln.startswith("WARNING: distinct photos") for ln in lines)


@pytest.mark.parametrize("model_id", ["openclip-rn50-openai", "openclip-vit-b-32-laion2b_s34b_b79k",
                                      "dinov2-small"])
def test_random_recipe_keeps_distinct_photos_distinct(model_id, rgb_photos):
    """Median pairwise cosine over 8 distinct photos < 0.9 (RN50's default init: 0.999)."""
    e = catalogue.get(model_id)
    built = families.build(e, "random", e.default_size)
    with torch.no_grad():
        out = built.module(_pixels(rgb_photos, built.preprocess)).numpy()
    assert median_pairwise_cosine(out) < MAX_MEDIAN_COSINE, model_id


def test_rn50_exports_with_parity(tmp_path):
    """ResNet-CLIP representative: random weights (BN-calibrated), batch 1 and 3 gated."""
    path = api.export_model(catalogue.get("openclip-rn50-openai"), weights="random",
                            output_dir=tmp_path)
    spec = open_model(path, provider="cpu").spec
    assert spec.family == "openclip-resnet" and spec.dim == 1024
    assert spec.parity["min_cosine"] >= 0.99999 and spec.parity["max_pairwise_cosine"] < 0.98
