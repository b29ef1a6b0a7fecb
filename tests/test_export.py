"""The export stage: parity with torch, the embedded spec, checkpoints, and bad input.

Models are exported once per session with random weights (conftest ``exported``); the
hub is never reached. Giant models (external data) sit behind the ``slow`` marker.
"""

from __future__ import annotations

import math
import os
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from simx.model import catalogue
from simx.cli.app import main as cli
from simx.core.errors import SimxError
from simx.export import api, families, to_onnx, verify, weights, writer
from simx.export.families.dinov2 import bake_pos_embed
from simx.run.session import open_model, read_spec
from simx.model.spec import METADATA_KEY, ModelSpec

SMALL = ("dinov2-small", "dinov2-small-reg", "openclip-vit-b-32-laion2b_s34b_b79k")
# Five distinct colour photos of odd sizes for the batch-5 run.
BATCH_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "stereo_motorcycle")


def _reference_pixels(photos: dict[str, np.ndarray], names: tuple[str, ...], pre) -> np.ndarray:
    """PIL + torchvision preprocessing, the reference the export is judged by."""
    from PIL import Image

    tf = verify.reference_transform(pre)
    return torch.stack([tf(Image.fromarray(photos[n]).convert("RGB")) for n in names]).numpy()


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def torch_models() -> dict[str, torch.nn.Module]:
    """The torch modules the session exports came from (random weights are seeded)."""
    return {
        mid: families.build(catalogue.get(mid), "random", 224).module for mid in SMALL
    }


# --------------------------------------------------------------------------- parity
@pytest.mark.parametrize("model_id", SMALL)
def test_small_models_match_torch_at_batch_1_2_5(model_id, exported, torch_models, rgb_photos):
    ms = open_model(exported[model_id], provider="cpu")
    pixels = _reference_pixels(rgb_photos, BATCH_PHOTOS, ms.spec.preprocess)
    module = torch_models[model_id]
    with torch.no_grad():
        ref = module(torch.from_numpy(pixels)).numpy()
    outs = {}
    for b in (1, 2, 5):
        chunks = [
            ms.session.run([ms.spec.output_name], {ms.spec.input_name: pixels[i : i + b]})[0]
            for i in range(0, len(pixels), b)
        ]
        out = np.concatenate(chunks)
        assert out.shape == (5, ms.spec.dim)
        assert _cos(out, ref).min() >= 0.99999, (model_id, b)
        assert np.abs(out - ref).max() <= 1e-4 * np.abs(ref).max(), (model_id, b)
        outs[b] = out
    # The batch axis is real: batch 5 gives each image what batch 1 gives it.
    np.testing.assert_allclose(outs[5], outs[1], atol=1e-5 * np.abs(ref).max(), rtol=0)
    # Distinct photos, distinct embeddings: a collapsed model fails here.
    n = ms.run(pixels)
    sim = n @ n.T
    np.fill_diagonal(sim, 0)
    assert sim.max() < 0.98, sim.max()
    # The runtime normalizes as the spec says.
    np.testing.assert_allclose(np.linalg.norm(n, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("model_id", SMALL)
def test_graph_has_symbolic_batch_and_no_resize(model_id, exported):
    m = onnx.load(str(exported[model_id]), load_external_data=False)
    dim0 = m.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param and not dim0.HasField("dim_value")
    assert m.graph.input[0].name == "pixel_values"
    assert [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim[1:]] == [3, 224, 224]
    ops = {n.op_type for n in m.graph.node}
    # The position embedding is baked in: no interpolation at run time.
    assert "Resize" not in ops and "Upsample" not in ops


def test_metadata_round_trips(exported):
    for model_id, path in exported.items():
        entry = catalogue.get(model_id)
        m = onnx.load(str(path), load_external_data=False)
        raw = {p.key: p.value for p in m.metadata_props}[METADATA_KEY]
        spec = ModelSpec.from_json(raw)
        assert ModelSpec.from_json(spec.to_json()) == spec
        assert spec.to_json() == raw
        assert (spec.id, spec.family, spec.source, spec.dim) == (
            entry.id, entry.family, entry.source, entry.dim)
        assert spec.weights == "random" and spec.precision == "fp32" and spec.opset == 18
        assert spec.image_size == 224 and spec.input_name == "pixel_values"
        assert spec.preprocess == entry.preprocess(224)
        assert spec.normalize is True
        assert spec.parity["min_cosine"] >= 0.99999
        assert spec.parity["max_abs_rel"] <= 1e-4
        assert spec.parity["max_pairwise_cosine"] < 0.98
        assert spec.gflops and spec.gflops > 1
        assert isinstance(spec.fusions, dict)


def _vit_gflops(tokens: int, d: int, layers: int, patch: int, grid: int, proj: int = 0) -> float:
    """Multiply-adds x 2 of a plain ViT: q/k/v/out projections, MLP (4d), attention
    products, patch embedding and an optional output projection."""
    per_layer = 4 * d * d * tokens + 2 * d * 4 * d * tokens + 2 * tokens * tokens * d
    return 2 * (layers * per_layer + d * 3 * patch * patch * grid * grid + d * proj) / 1e9


@pytest.mark.parametrize("model_id, expected", [
    ("dinov2-small", _vit_gflops(257, 384, 12, 14, 16)),
    ("openclip-vit-b-32-laion2b_s34b_b79k", _vit_gflops(50, 768, 12, 32, 7, proj=512)),
])
def test_gflops_count_attention_too(model_id, expected, torch_models):
    assert verify.gflops(torch_models[model_id], 224) == pytest.approx(expected, rel=0.002)


def test_dinov2_preprocess_is_official_eval_transform(exported):
    spec = open_model(exported["dinov2-small"], provider="cpu").spec
    assert (spec.preprocess.resize, spec.preprocess.crop) == (256, 224)
    assert spec.preprocess.mean == (0.485, 0.456, 0.406)


# --------------------------------------------------------------------------- position grid
def _official_interpolate_pos_encoding(
    pos_embed: torch.Tensor, npatch: int, w: int, h: int, patch: int, offset: float, antialias: bool
) -> torch.Tensor:
    """facebookresearch/dinov2 ``DinoVisionTransformer.interpolate_pos_encoding``, as run
    on every forward (pos_embed [1, 1 + M*M, D] with the class position first)."""
    N = pos_embed.shape[1] - 1
    if npatch == N and w == h:
        return pos_embed
    pos_embed = pos_embed.float()
    class_pos_embed = pos_embed[:, 0]
    patch_pos_embed = pos_embed[:, 1:]
    dim = pos_embed.shape[-1]
    w0, h0 = w // patch, h // patch
    M = int(math.sqrt(N))
    kwargs = {}
    if offset:
        kwargs["scale_factor"] = (float(w0 + offset) / M, float(h0 + offset) / M)
    else:
        kwargs["size"] = (w0, h0)
    patch_pos_embed = F.interpolate(
        patch_pos_embed.reshape(1, M, M, dim).permute(0, 3, 1, 2),
        mode="bicubic", antialias=antialias, **kwargs)
    assert (w0, h0) == patch_pos_embed.shape[-2:]
    patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).view(1, -1, dim)
    return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1)


@pytest.mark.parametrize("registers", [False, True])
@pytest.mark.parametrize("grid", [8, 16, 37, 40])
def test_baked_position_grid_is_bit_identical_to_official_forward(registers, grid):
    torch.manual_seed(grid)
    pos = torch.randn(1, 1 + 37 * 37, 32)
    offset, antialias = (0.0, True) if registers else (0.1, False)
    official = _official_interpolate_pos_encoding(
        pos, grid * grid, grid * 14, grid * 14, 14, offset, antialias)
    baked = bake_pos_embed(pos[:, 1:], grid, antialias=antialias, offset=offset)
    assert torch.equal(baked, official[:, 1:])
    if grid != 37:
        # timm's own resampling (size + antialias) differs for non-register models: the
        # test above could fail.
        timm_way = bake_pos_embed(pos[:, 1:], grid, antialias=True, offset=0.0)
        assert registers or not torch.equal(timm_way, official[:, 1:])


# --------------------------------------------------------------------------- official checkpoint
def _official_state(registers: bool) -> tuple[dict[str, torch.Tensor], torch.nn.Module]:
    """A random DINOv2-S state dict in the official key format at 518 px, and a timm
    module holding the same block weights (for the reference forward)."""
    import timm

    torch.manual_seed(11 + registers)
    m = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0,
                          img_size=518, init_values=1.0).eval()
    sd = {k: v.clone() for k, v in m.state_dict().items()
          if k not in ("cls_token", "pos_embed", "reg_token")}
    d = 384
    # Scales chosen so that photos stay distinct (pairwise cosine ~0.92) while a wrong
    # interpolation of the grid still moves the output far beyond the parity tolerance.
    sd["cls_token"] = torch.randn(1, 1, d) * 0.02
    sd["pos_embed"] = torch.randn(1, 1 + 37 * 37, d) * 0.05
    sd["mask_token"] = torch.zeros(1, d)
    if registers:
        sd["register_tokens"] = torch.randn(1, 4, d) * 0.02
    return sd, m


@torch.no_grad()
def _official_forward(sd, blocks, x, registers: bool, offset=None, antialias=None) -> np.ndarray:
    """The official hub forward (prepare_tokens_with_masks -> blocks -> norm -> CLS), with
    the position grid interpolated at forward time."""
    if offset is None:
        offset, antialias = (0.0, True) if registers else (0.1, False)
    B, _, w, h = x.shape
    t = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=14)
    t = t.flatten(2).transpose(1, 2)
    t = torch.cat((sd["cls_token"].expand(B, -1, -1), t), dim=1)
    t = t + _official_interpolate_pos_encoding(sd["pos_embed"], t.shape[1] - 1, w, h, 14,
                                               offset, antialias)
    if registers:
        t = torch.cat((t[:, :1], sd["register_tokens"].expand(B, -1, -1), t[:, 1:]), dim=1)
    for blk in blocks.blocks:
        t = blk(t)
    return blocks.norm(t)[:, 0].numpy()


@pytest.mark.parametrize("registers", [False, True], ids=["plain", "reg"])
def test_official_checkpoint_matches_official_forward(registers, tmp_path, rgb_photos):
    sd, blocks = _official_state(registers)
    ckpt = tmp_path / ("dinov2_vits14_reg4_pretrain.pth" if registers else "dinov2_vits14_pretrain.pth")
    torch.save(sd, ckpt)
    entry = catalogue.dinov2("small", registers)
    out_dir = tmp_path / "out"
    path = api.export_model(entry, weights=str(ckpt), output_dir=out_dir, image_size=112, opset=18)
    ms = open_model(path, provider="cpu")
    assert ms.spec.weights == "sha256:" + weights.sha256_file(ckpt)
    assert ms.spec.image_size == 112 and ms.spec.preprocess.resize == 128

    pixels = _reference_pixels(rgb_photos, BATCH_PHOTOS[:3], ms.spec.preprocess)
    out = ms.session.run(None, {"pixel_values": pixels})[0]
    ref = _official_forward(sd, blocks, torch.from_numpy(pixels), registers)
    assert _cos(out, ref).min() >= 0.99999
    assert np.abs(out - ref).max() <= 1e-4 * np.abs(ref).max()
    # The test can fail: the other interpolation (timm's / the other family's) is visibly off.
    wrong = _official_forward(sd, blocks, torch.from_numpy(pixels), registers,
                              offset=0.1 if registers else 0.0, antialias=not registers)
    assert np.abs(wrong - ref).max() > 1e-3 * np.abs(ref).max()
    assert _cos(wrong, ref).min() < 0.99999


def test_open_clip_checkpoint_file_loads_like_open_clip_does(tmp_path, rgb_photos):
    """An open_clip checkpoint (a training-style .pt with 'state_dict' and 'module.'
    prefixes) at a non-default size: the export equals open_clip's own loading of the file."""
    import open_clip

    torch.manual_seed(3)
    src = open_clip.create_model("ViT-B-32", pretrained=None)
    ckpt = tmp_path / "epoch_1.pt"
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}},
               ckpt)
    entry = catalogue.get("openclip-vit-b-32-laion2b_s34b_b79k")
    path = api.export_model(entry, weights=str(ckpt), output_dir=tmp_path / "out", image_size=64)
    ms = open_model(path, provider="cpu")
    assert ms.spec.weights == "sha256:" + weights.sha256_file(ckpt)
    assert (ms.spec.image_size, ms.spec.preprocess.resize) == (64, 64)
    ref_model = open_clip.create_model("ViT-B-32", pretrained=str(ckpt), force_image_size=64).eval()
    x = _reference_pixels(rgb_photos, BATCH_PHOTOS[:3], ms.spec.preprocess)
    with torch.no_grad():
        ref = ref_model.encode_image(torch.from_numpy(x)).numpy()
    out = ms.session.run(None, {"pixel_values": x})[0]
    assert _cos(out, ref).min() >= 0.99999
    assert np.abs(out - ref).max() <= 1e-4 * np.abs(ref).max()


def test_torchscript_checkpoints_are_read(tmp_path):
    """OpenAI's CLIP .pt files are TorchScript archives; read_checkpoint takes their weights."""
    lin = torch.nn.Linear(3, 4)
    path = tmp_path / "ViT-B-32.pt"
    with pytest.warns(FutureWarning):  # torch.jit.script is deprecated, still what OpenAI shipped
        torch.jit.script(lin).save(str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing leaks to the user's terminal
        state, digest = weights.read_checkpoint(path)
    assert weights.is_torchscript(path)
    assert set(state) == {"weight", "bias"} and torch.equal(state["weight"], lin.weight)
    assert digest == weights.sha256_file(path)


def test_read_checkpoint_unwraps_training_checkpoints(tmp_path):
    t = torch.ones(2)
    dino = tmp_path / "dino_train.pth"
    torch.save({"teacher": {"backbone.cls_token": t, "backbone.blocks.0.norm1.weight": t,
                            "dino_head.mlp.0.weight": t}, "iteration": 5}, dino)
    assert sorted(weights.read_checkpoint(dino)[0]) == ["blocks.0.norm1.weight", "cls_token"]
    clip = tmp_path / "epoch_3.pt"
    torch.save({"state_dict": {"module.visual.proj": t}, "epoch": 3}, clip)
    assert list(weights.read_checkpoint(clip)[0]) == ["visual.proj"]
    junk = tmp_path / "list.pt"
    torch.save([1, 2], junk)
    with pytest.raises(weights.WeightsError, match="does not hold a state dict"):
        weights.read_checkpoint(junk)


# --------------------------------------------------------------------------- atomic writes
def test_external_data_is_written_atomically_and_loads(exported, tmp_path, rgb_photos):
    model = onnx.load(str(exported["dinov2-small"]))
    final = tmp_path / "dinov2-small.onnx"
    with writer.AtomicModelWriter(final, external=True) as w:
        tmp = w.write(model)
        assert not final.exists() and tmp.exists()
        writer.set_metadata(model, "note", "x")
        path = w.commit(model)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dinov2-small.onnx", "dinov2-small.onnx.data"]
    stub = onnx.load(str(path), load_external_data=False)
    locations = {e.value for t in stub.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {"dinov2-small.onnx.data"}
    assert path.stat().st_size < 2_000_000  # weights are in the .data file
    a = open_model(path, provider="cpu")
    b = open_model(exported["dinov2-small"], provider="cpu")
    x = _reference_pixels(rgb_photos, ("coffee",), a.spec.preprocess)
    np.testing.assert_array_equal(a.run(x), b.run(x))


def test_writer_leaves_nothing_on_failure(exported, tmp_path):
    model = onnx.load(str(exported["openclip-vit-b-32-laion2b_s34b_b79k"]))
    for external in (False, True):
        with pytest.raises(RuntimeError):
            with writer.AtomicModelWriter(tmp_path / "m.onnx", external=external) as w:
                w.write(model)
                raise RuntimeError("verification failed")
        assert list(tmp_path.iterdir()) == []


class _Tiny(torch.nn.Module):
    """A fast stand-in for a tower (56 px): patchify conv -> flatten -> linear to ``dim``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 16, 14, stride=14)
        self.fc = torch.nn.Linear(16 * 4 * 4, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).flatten(1))


@pytest.fixture()
def tiny_build(monkeypatch):
    """Make export_model build _Tiny instead of the real tower: the pipeline in seconds."""

    def build(e, weights, image_size):
        return families.Built(module=_Tiny(e.dim).eval(), weights="random",
                             preprocess=e.preprocess(image_size), normalize=True)

    monkeypatch.setattr(families, "build", build)


def test_failed_verification_leaves_no_file(tiny_build, monkeypatch, tmp_path):
    monkeypatch.setitem(verify.GATES, "fp32", verify.Gate(1.1, 1e-4, True))  # unreachable
    with pytest.raises(verify.VerificationError, match="min cosine"):
        api.export_model(catalogue.get("dinov2-small"), weights="random", output_dir=tmp_path,
                         image_size=56)
    assert list(tmp_path.iterdir()) == []


def test_export_switches_to_external_data_above_the_threshold(tiny_build, monkeypatch, tmp_path,
                                                             rgb_photos):
    """The giant-model path (weights in <id>.onnx.data), exercised on a tiny tower."""
    monkeypatch.setattr(writer, "EXTERNAL_DATA_THRESHOLD", 1024)
    path = api.export_model(catalogue.get("dinov2-small"), weights="random", output_dir=tmp_path,
                            image_size=56)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dinov2-small.onnx", "dinov2-small.onnx.data"]
    ms = open_model(path, provider="cpu")
    assert ms.spec.extra["external_data"] is True
    x = _reference_pixels(rgb_photos, ("coffee", "rocket"), ms.spec.preprocess)
    with torch.no_grad():
        ref = _Tiny(384)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ms.session.run(None, {"pixel_values": x})[0], ref, atol=1e-4)


@pytest.mark.parametrize("precision", ["int8", "fp16"])
def test_precision_writes_its_own_file(tiny_build, precision, tmp_path):
    entry = catalogue.get("dinov2-small")
    path = api.export_model(entry, weights="random", output_dir=tmp_path, image_size=56,
                            precision=precision)
    assert path == tmp_path / f"dinov2-small-{precision}.onnx"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    spec = read_spec(path)
    assert spec.precision == precision and spec.id == "dinov2-small"
    assert spec.parity["photos_min_cosine"] >= verify.GATES[precision].min_cosine


def test_text_flag_exports_the_text_tower_after_the_image(tiny_build, monkeypatch, tmp_path):
    from simx.export import text

    calls = []

    def export_text_tower(entry, *, weights, output_dir, opset, image_size, tokenizer,
                          image_spec_hash):
        assert (output_dir / f"{entry.id}.onnx").is_file()  # image tower first
        from simx.run.session import read_spec

        image = read_spec(output_dir / f"{entry.id}.onnx")
        assert image_spec_hash == image.embedding_hash() and tokenizer is None
        assert image.extra["pair"]  # the identity the text tower records too
        calls.append((entry.id, weights, output_dir, opset, image_size))
        return output_dir / f"{entry.id}-text.onnx"

    monkeypatch.setattr(text, "export_text_tower", export_text_tower)
    entry = catalogue.get("openclip-vit-b-32-openai")
    paths = api.export_model(entry, weights="random", output_dir=tmp_path, image_size=64, text=True)
    assert paths == [tmp_path / "openclip-vit-b-32-openai.onnx",
                     tmp_path / "openclip-vit-b-32-openai-text.onnx"]
    # The text spec records the image tower's real size (it once said 224 for any export).
    assert calls == [("openclip-vit-b-32-openai", "random", tmp_path, 18, 64)]
    with pytest.raises(SimxError, match="no text tower"):
        api.export_model(catalogue.get("dinov2-small"), weights="random", output_dir=tmp_path,
                         text=True)


def test_exported_batch_axis_must_be_symbolic():
    x = onnx.helper.make_tensor_value_info("pixel_values", onnx.TensorProto.FLOAT, [1, 3, 14, 14])
    y = onnx.helper.make_tensor_value_info("embeddings", onnx.TensorProto.FLOAT, [1, 3])
    g = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["pixel_values"], ["e"])],
                               "g", [x], [y])
    with pytest.raises(to_onnx.ExportError, match="fixed at 1"):
        to_onnx.assert_symbolic_batch(onnx.helper.make_model(g))


# --------------------------------------------------------------------------- bad input (CLI)
def _one_line_error(result) -> str:
    """The one error line (stage lines, "simx: [n/5] ...", may precede it)."""
    assert result.exit_code != 0
    lines = [ln for ln in result.stderr.splitlines() if ln.strip() and not ln.startswith("simx: [")]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("simx: error: ")
    return lines[0]


def _nothing_written(folder: Path) -> None:
    assert not folder.exists() or list(folder.iterdir()) == []


@pytest.fixture()
def checkpoints(tmp_path) -> dict[str, Path]:
    """A corrupt file and a DINOv2-S-shaped checkpoint (the wrong architecture for others)."""
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"PK\x03\x04 this is not a checkpoint" * 100)
    small = {
        "cls_token": torch.zeros(1, 1, 384),
        "pos_embed": torch.zeros(1, 1 + 37 * 37, 384),
        "mask_token": torch.zeros(1, 384),
        "patch_embed.proj.weight": torch.zeros(384, 3, 14, 14),
    }
    wrong = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(small, wrong)
    wrong_clip = tmp_path / "open_clip_model.safetensors"
    from safetensors.torch import save_file

    save_file(small, str(wrong_clip))
    photo = tmp_path / "x.jpg"  # a photo passed as --weights by mistake
    photo.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(200))
    objects = tmp_path / "objects.pt"  # unpickling needs a class: torch's advice says weights_only=False
    torch.save({"w": torch.ones(1), "opt": torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=1)}, objects)
    return {"corrupt": corrupt, "wrong": wrong, "wrong_clip": wrong_clip, "photo": photo,
            "objects": objects}


@pytest.mark.parametrize(
    "args, expect",
    [
        (["dinov2", "--variant", "tiny"], "valid variants: base, giant, large, small"),
        (["openclip", "--model", "ViT-X-1", "--pretrained", "openai"], "closest: ViT-g-14, ViT-L-14"),
        (["openclip", "--model", "ViT-H-14", "--pretrained", "openai"], "valid tags: dfn5b, laion2b_s32b_b79k"),
        (["dinov2", "--variant", "small", "--weights", "/nonexistent/ckpt.pth"], "checkpoint not found"),
        (["dinov2", "--variant", "small", "--weights", "{corrupt}"], "cannot read checkpoint"),
        (["dinov2", "--variant", "small", "--weights", "{photo}"],
         "x.jpg is not a PyTorch or safetensors checkpoint (it is a JPEG image)"),
        (["dinov2", "--variant", "small", "--weights", "{objects}"], "which simx does not unpickle"),
        (["dinov2", "--variant", "base", "--weights", "{wrong}"], "does not fit dinov2-base"),
        (["dinov2", "--variant", "small", "--registers", "--weights", "{wrong}"], "does not fit dinov2-small-reg"),
        (["openclip", "--model", "ViT-B-32", "--pretrained", "openai", "--weights", "{wrong_clip}"],
         "does not fit openclip-vit-b-32-openai"),
        (["dinov2", "--variant", "small", "--weights", "random", "--image-size", "100"], "multiple"),
        (["dinov2", "--variant", "small", "--weights", "random", "--opset", "12"], "use 18 to"),
    ],
    ids=["variant", "model", "tag", "missing", "corrupt", "photo", "objects", "wrong-arch", "wrong-arch-reg",
         "wrong-arch-clip", "image-size", "opset"],
)
def test_bad_input_is_one_line_and_leaves_nothing(args, expect, checkpoints, tmp_path):
    out = tmp_path / "out"
    args = [a.format(**checkpoints) for a in args]
    result = CliRunner().invoke(cli, ["export", *args, "--output-dir", str(out)])
    line = _one_line_error(result)
    assert expect in line, line
    assert result.exit_code == 2 and "weights_only" not in line  # never advise unsafe loading
    _nothing_written(out)


def test_unwritable_output_dir(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    result = CliRunner().invoke(
        cli, ["export", "dinov2", "--variant", "small", "--weights", "random",
              "--output-dir", str(blocker / "models")])
    assert "cannot write to output dir" in _one_line_error(result)
    assert blocker.read_text() == "x"
    if os.geteuid() != 0:  # root writes through permission bits
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        result = CliRunner().invoke(
            cli, ["export", "dinov2", "--variant", "small", "--weights", "random",
                  "--output-dir", str(ro)])
        assert "cannot write to output dir" in _one_line_error(result)


@pytest.mark.parametrize(
    "env, args",
    [
        ({"HF_HUB_OFFLINE": "1"}, ["dinov2", "--variant", "small"]),
        ({"HF_ENDPOINT": "http://127.0.0.1:9"}, ["openclip", "--model", "ViT-B-32",
                                                  "--pretrained", "laion2b_s34b_b79k"]),
    ],
    ids=["offline", "unreachable"],
)
def test_hub_unreachable_fails_at_once_naming_the_alternatives(env, args, tmp_path):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    full_env.update(env, HF_HOME=str(tmp_path / "hf"))  # an empty cache: nothing to fall back on
    out = tmp_path / "out"
    started = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", "simx.cli", "export", *args, "--output-dir", str(out)],
        capture_output=True, text=True, env=full_env, timeout=300,
    )
    elapsed = time.monotonic() - started
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith("simx: [")]
    assert len(lines) == 1, r.stderr
    assert "--weights PATH" in lines[0] and "--weights random" in lines[0]
    assert "pretrained weights" in lines[0]
    _nothing_written(out)
    print(f"hub failure reported after {elapsed:.1f}s")


def test_pretrained_loads_from_the_hugging_face_cache_offline(tmp_path, rgb_photos):
    """``--weights pretrained`` with no network but the file in the HF cache: timm's hub
    copy (timm key layout, 37x37 grid) is loaded and the grid resized the official way."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(5)
    m = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0,
                          img_size=518, init_values=1.0).eval()
    sd = {k: v.contiguous() for k, v in m.state_dict().items()}
    sd["pos_embed"] = torch.randn_like(sd["pos_embed"]) * 0.05
    repo = tmp_path / "hf" / "hub" / "models--timm--vit_small_patch14_dinov2.lvd142m"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    save_file(sd, str(repo / "snapshots" / commit / "model.safetensors"))

    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT="http://127.0.0.1:9")
    out = tmp_path / "out"
    r = subprocess.run(
        [sys.executable, "-m", "simx.cli", "export", "dinov2", "--variant", "small",
         "--image-size", "112", "--output-dir", str(out)],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert r.returncode == 0, r.stderr
    noise = [ln for ln in r.stderr.splitlines()
             if ln.strip() and not ln.startswith(("simx: [", "simx: parity:"))]
    assert noise == []  # simx's own stage lines only: no warnings from the libraries
    path = Path(r.stdout.strip())
    assert path == out / "dinov2-small.onnx"
    ms = open_model(path, provider="cpu")
    assert ms.spec.weights == "pretrained"
    x = _reference_pixels(rgb_photos, BATCH_PHOTOS[:3], ms.spec.preprocess)
    # timm's non-register layout is the official one (class position first in pos_embed).
    ref = _official_forward(sd, m, torch.from_numpy(x), registers=False)
    out_ = ms.session.run(None, {"pixel_values": x})[0]
    assert _cos(out_, ref).min() >= 0.99999
    assert np.abs(out_ - ref).max() <= 1e-4 * np.abs(ref).max()


# --------------------------------------------------------------------------- giant models
@pytest.mark.slow
@pytest.mark.parametrize("model_id", ["dinov2-giant", "openclip-vit-h-14-laion2b_s32b_b79k"])
def test_giant_models_export_with_external_data(model_id, tmp_path):
    started = time.monotonic()
    path = api.export_model(catalogue.get(model_id), weights="random", output_dir=tmp_path)
    elapsed = time.monotonic() - started
    data = path.with_name(path.name + ".data")
    assert path.is_file() and data.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, data.name])
    assert data.stat().st_size > 2**31
    ms = open_model(path, provider="cpu")
    assert ms.spec.extra["external_data"] is True
    assert ms.spec.parity["min_cosine"] >= 0.99999
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224), dtype=np.float32)
    assert ms.run(x).shape == (2, ms.spec.dim)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"{model_id}: export {elapsed:.0f}s, peak RSS {peak_gb:.1f} GB, "
          f".onnx {path.stat().st_size / 2**20:.1f} MiB, .data {data.stat().st_size / 2**30:.2f} GiB, "
          f"parity {ms.spec.parity}")


def test_cli_export_prints_its_stages_and_a_parity_summary(tmp_path):
    from simx.run.session import read_spec

    r = CliRunner().invoke(cli, ["export", "dinov2", "--variant", "small", "--weights", "random",
                                 "--image-size", "56", "--output-dir", str(tmp_path)])
    assert r.exit_code == 0, r.output
    err = r.stderr.splitlines()
    assert [ln.split("]")[0] for ln in err if ln.startswith("simx: [")] == [
        f"simx: [{i}/5" for i in range(1, 6)]
    spec = read_spec(tmp_path / "dinov2-small.onnx")
    summary = next(ln for ln in err if ln.startswith("simx: parity:"))
    assert f"min cosine {spec.parity['min_cosine']:.6f}" in summary and "RANDOM" in summary
    assert r.stdout.strip() == str(tmp_path / "dinov2-small.onnx")
