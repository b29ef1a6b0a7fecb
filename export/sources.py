"""Build the torch module for a registry entry, and the weight-loading helpers.

``build`` hands the entry to its family module (``simx.export.families``), which returns
a :class:`Built`: an ``nn.Module`` that maps float32 pixels [B, 3, S, S] to the
embedding the reference code produces, plus what the spec needs to know about it
(weights label, preprocessing, output normalisation). This module holds what the
families share: checkpoint reading, hub downloads that fail fast offline, strict loading.

Weights come from one of three places:

* ``"pretrained"``: timm / open_clip download them as they normally do (Hugging Face
  cache). With no network this fails at once, naming ``--weights PATH`` and
  ``--weights random``, instead of letting huggingface_hub retry for a minute.
* ``"random"``: the architecture with seeded random weights, for speed tests, adjusted by
  the family's recipe so distinct photos stay distinct (DINOv2: LayerScale at 1.0, as
  timm's 1e-5 makes every image collapse to one embedding).
* a checkpoint path: official DINOv2 ``*_pretrain.pth``, timm state dicts, open_clip
  ``.bin`` / ``.pt`` / ``.safetensors``. Recorded as ``sha256:<hex>``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import re
import socket
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import nn

from simx.core.errors import SimxError, first_line
from simx.model.catalogue import ModelEntry
from simx.model.spec import PreprocessSpec

# DINOv2 checkpoints hold the position grid of their 518-px training resolution.
DINOV2_GRID = 37
RANDOM_SEED = 0


class WeightsError(SimxError):
    """A checkpoint that is missing, unreadable, or not for this architecture; or no hub."""


@dataclass
class Built:
    """A torch module ready to export, and the facts about it the spec records."""

    module: nn.Module
    weights: str  # "pretrained" | "random" | "sha256:<hex>"
    preprocess: PreprocessSpec
    normalize: bool
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- weights
def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()




_KNOWN_NOT_CHECKPOINTS = (
    (b"\xff\xd8\xff", "it is a JPEG image"),
    (b"\x89PNG", "it is a PNG image"),
    (b"GIF8", "it is a GIF image"),
    (b"RIFF", "it is a RIFF (WebP/WAV) file"),
    (b"\x08", "it looks like an ONNX model; pass a torch or safetensors file"),
)


def checkpoint_kind(path: Path) -> str:
    """``"zip"``, ``"pickle"`` or ``"safetensors"`` from the file's first bytes, or raise.

    Why: torch.load on something else (a photo passed as ``--weights``) answers with its
    safe-loading advice, whose cut-off first line suggests ``weights_only=False``; simx
    never unpickles code, so a wrong file must get a plain "not a checkpoint" instead.
    """
    import zipfile

    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(b"PK\x03\x04") or zipfile.is_zipfile(path):
        return "zip"  # torch >= 1.6 checkpoints and TorchScript archives
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"  # legacy torch.save: a pickle protocol 2-5 stream
    if len(head) >= 9:
        n = int.from_bytes(head[:8], "little")
        if head[8:9] == b"{" and 2 <= n <= os.path.getsize(path) - 8:
            return "safetensors"  # u64 header length, then the JSON header
    why = next((w for magic, w in _KNOWN_NOT_CHECKPOINTS if head.startswith(magic)),
               "its first bytes match no checkpoint format" if head else "it is empty")
    raise WeightsError(f"{path} is not a PyTorch or safetensors checkpoint ({why})")


def read_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], str]:
    """Load a state dict from a torch or safetensors file and return it with its sha256.

    Only tensors are unpickled (``weights_only=True``): a checkpoint is data, not code.
    """
    p = Path(path)
    if not p.is_file():
        raise WeightsError(
            f"checkpoint not found: {p} (--weights takes 'pretrained', 'random' or a file path)"
        )
    kind = checkpoint_kind(p)
    digest = sha256_file(p)
    try:
        if kind == "zip" and is_torchscript(p):
            # OpenAI's original CLIP .pt files are TorchScript archives, which torch.load
            # refuses with weights_only; torch.jit.load runs no pickled Python either.
            with warnings.catch_warnings():  # "torch.jit.load is deprecated"
                warnings.simplefilter("ignore", FutureWarning)
                obj = dict(torch.jit.load(str(p), map_location="cpu").state_dict())
            for key in ("input_resolution", "context_length", "vocab_size"):
                obj.pop(key, None)
        elif kind == "safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(p), device="cpu")
        else:
            obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:  # torch / safetensors raise many types for a bad file
        msg = first_line(e)
        if "weights only" in msg.lower() or "weights_only" in msg:
            # torch's advice is to turn safe loading off; simx never does.
            msg = "it holds objects other than tensors, which simx does not unpickle"
        raise WeightsError(f"cannot read checkpoint {p}: {msg}") from None
    for key in ("state_dict", "model", "teacher"):  # common training-checkpoint wrappers
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if isinstance(obj, dict) and obj and all(isinstance(k, str) for k in obj):
        if all(k.startswith("module.") for k in obj):  # DataParallel / DDP
            obj = {k[len("module."):]: v for k, v in obj.items()}
        if any(k.startswith("backbone.") for k in obj):  # DINOv2 training: backbone + heads
            obj = {k[len("backbone."):]: v for k, v in obj.items() if k.startswith("backbone.")}
    if not isinstance(obj, dict) or not obj or not all(
        isinstance(v, torch.Tensor) for v in obj.values()
    ):
        raise WeightsError(f"cannot read checkpoint {p}: it does not hold a state dict of tensors")
    return obj, digest


def is_torchscript(path: Path) -> bool:
    """Whether ``path`` is a TorchScript archive (a zip holding ``constants.pkl``)."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("constants.pkl") for n in z.namelist())


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face endpoint answers a TCP connect.

    huggingface_hub retries a dead endpoint with back-off for about 45 s before giving
    up; a 3 s probe lets simx fail at once (or use the local cache) instead.
    """
    try:
        from huggingface_hub import constants

        url = urlparse(constants.ENDPOINT)
    except Exception:  # pragma: no cover - huggingface_hub always there with timm
        url = urlparse("https://huggingface.co")
    host = url.hostname or "huggingface.co"
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def quiet_logging(level: int = logging.WARNING) -> Iterator[None]:
    """Silence timm / open_clip / huggingface_hub log lines up to ``level``.

    They log to the root logger ("initialized randomly", which is the point of --weights
    random; "Failed to download", which simx reports itself as one line), and library
    code doesn't print.
    """
    logging.disable(level)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


@contextlib.contextmanager
def _hub_download(what: str) -> Iterator[None]:
    """Run a timm / open_clip pretrained download; any failure becomes one clear line.

    When the hub is unreachable the download runs in huggingface_hub's offline mode, so a
    cached file still loads and a missing one fails immediately.
    """
    offline_patch = None
    try:
        from huggingface_hub import constants

        if not constants.HF_HUB_OFFLINE and not _hub_reachable():
            offline_patch = constants
            constants.HF_HUB_OFFLINE = True
    except ImportError:  # pragma: no cover
        pass
    try:
        with quiet_logging(logging.ERROR):
            yield
    except SimxError:
        raise
    except Exception as e:
        raise WeightsError(
            f"could not download the pretrained weights of {what} ({type(e).__name__}: "
            f"{first_line(e)[:120]}); without network use --weights PATH (a local "
            "checkpoint) or --weights random"
        ) from None
    finally:
        if offline_patch is not None:
            offline_patch.HF_HUB_OFFLINE = False


def _load_strict(
    module: nn.Module, state: dict[str, torch.Tensor], what: str, src: str, assign: bool = False
) -> None:
    """load_state_dict(strict) with a one-line error that says the checkpoint doesn't fit."""
    try:
        module.load_state_dict(state, strict=True, assign=assign)
    except RuntimeError as e:
        lines = [x.strip() for x in str(e).splitlines() if x.strip()]
        detail = "; ".join(lines[1:3]) if len(lines) > 1 else first_line(e)
        raise WeightsError(f"checkpoint {src} does not fit {what}: {detail[:300]}") from None


# --------------------------------------------------------------------------- DINOv2
def bake_pos_embed(
    patch_pos: torch.Tensor, grid: int, *, antialias: bool, offset: float
) -> torch.Tensor:
    """Resize a [1, M*M, D] patch position grid to [1, grid*grid, D] the official way.

    This is ``DinoVisionTransformer.interpolate_pos_encoding`` from facebookresearch/dinov2,
    done once at export time instead of on every forward: non-register hub models use
    ``scale_factor=(g + 0.1) / M`` without antialias, register models ``size=(g, g)``
    with antialias. The result is bit-identical to the official forward and the graph has
    no Resize node. timm resamples differently when it loads official checkpoints, so the
    position grid is always taken at its original size and resized here.
    """
    n, dim = patch_pos.shape[1], patch_pos.shape[2]
    m = math.isqrt(n)
    if m * m != n:
        raise ValueError(f"pos_embed has {n} patch positions, not a square grid")
    if m == grid:  # the official forward returns pos_embed unchanged here
        return patch_pos
    kwargs: dict[str, Any] = {}
    if offset:
        s = float(grid + offset) / m
        kwargs["scale_factor"] = (s, s)
    else:
        kwargs["size"] = (grid, grid)
    p = F.interpolate(
        patch_pos.float().reshape(1, m, m, dim).permute(0, 3, 1, 2),
        mode="bicubic",
        antialias=antialias,
        **kwargs,
    )
    assert p.shape[-2:] == (grid, grid), p.shape
    return p.permute(0, 2, 3, 1).reshape(1, grid * grid, dim).to(patch_pos.dtype)


def official_dinov2_to_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official DINOv2 key layout -> timm's, as timm's ``_convert_dinov2`` does.

    Register models become timm ``no_embed_class`` models: the class position is folded
    into ``cls_token`` (the same single add the official forward does) and ``pos_embed``
    keeps the patch grid only. SwiGLU ``w12`` / ``w3`` become ``fc1`` / ``fc2``.
    """
    out: dict[str, torch.Tensor] = {}
    state = dict(state)
    state.pop("mask_token", None)
    if "register_tokens" in state:
        out["reg_token"] = state.pop("register_tokens")
        out["cls_token"] = state.pop("cls_token") + state["pos_embed"][:, 0]
        out["pos_embed"] = state.pop("pos_embed")[:, 1:]
    for k, v in state.items():
        # Training checkpoints built with block_chunks > 0 name blocks "blocks.<chunk>.<i>.".
        k = re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", k)
        k = k.replace(".mlp.w12.", ".mlp.fc1.").replace(".mlp.w3.", ".mlp.fc2.")
        out[k] = v
    return out


def timm_pretrained_state(name: str, what: str) -> dict[str, torch.Tensor]:
    """timm's pretrained weights for ``name`` (its Hugging Face hub copy, via timm's own
    loader and cache) as a state dict at the native grid, without building a model first:
    so an offline machine fails in seconds, and giant needs no extra model in memory.
    Official DINOv2 checkpoints (they hold ``mask_token``) are converted to timm's layout."""
    import timm
    from timm.models import get_pretrained_cfg, load_state_dict_from_hf

    cfg = get_pretrained_cfg(name)
    if cfg is None or not cfg.hf_hub_id:  # pragma: no cover - every DINO tag has one
        with _hub_download(what):
            return timm.create_model(name, pretrained=True, num_classes=0).state_dict()
    with _hub_download(what):
        if cfg.hf_hub_filename:
            state = load_state_dict_from_hf(cfg.hf_hub_id, cfg.hf_hub_filename)
        else:
            state = load_state_dict_from_hf(cfg.hf_hub_id)
    return official_dinov2_to_timm(state) if "mask_token" in state else dict(state)


def load_into_meta_built(
    make: Callable[[], nn.Module], state: dict[str, torch.Tensor], what: str, src: str
) -> nn.Module:
    """``make()`` on the meta device, then given ``state``'s own tensors (fp32).

    No init time and no second copy of the weights (4.5 GB for DINOv2-giant). A model
    with non-persistent buffers would keep them on meta that way, so it is built for real.
    """
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    with torch.device("meta"):
        model = make()
    persistent = set(model.state_dict())
    on_meta = not any(n not in persistent for n, _ in model.named_buffers())
    if not on_meta:
        model = make()
    _load_strict(model, state, what, src, assign=on_meta)
    return model.eval()


def build(entry: ModelEntry, weights: str, image_size: int) -> Built:
    """The torch module for ``entry`` with the requested weights, in eval mode.

    The entry's family module builds it (``simx.export.families.FAMILIES``).
    """
    from .families import family

    if not entry.size_ok(image_size):
        raise SimxError(
            f"--image-size {image_size} is not a positive multiple of {entry.id}'s patch "
            f"size {entry.patch_size}"
        )
    built = family(entry.family).build(entry, weights, image_size)
    for p in built.module.parameters():
        p.requires_grad_(False)
    return built
