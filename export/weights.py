"""Reading weights: checkpoint files, the Hugging Face hub (failing fast offline), strict
loading into a module, and the seed of random weights.

Weights come from one of three places, recorded in the spec as the label in brackets:

* ``"pretrained"``: timm / open_clip download them as they normally do (Hugging Face
  cache). With no network this fails at once, naming ``--weights PATH`` and
  ``--weights random``, instead of letting huggingface_hub retry for a minute
  (``hub_download``: offline mode when the hub does not answer, so a cached file loads).
* ``"random"``: the architecture with weights seeded by ``RANDOM_SEED``, for speed tests,
  adjusted by the family's recipe (``Family.randomize``) so distinct photos stay distinct.
* a checkpoint path: official DINOv2 ``*_pretrain.pth``, timm state dicts, open_clip
  ``.bin`` / ``.pt`` / ``.safetensors`` (``read_checkpoint``). Recorded as ``sha256:<hex>``.

Family-specific key conversions live in the family modules; nothing here knows a family.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from simx.core.errors import SimxError, first_line

RANDOM_SEED = 0


class WeightsError(SimxError):
    """A checkpoint that is missing, unreadable, or not for this architecture; or no hub."""


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


def hub_reachable(timeout: float = 3.0) -> bool:
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
def hub_download(what: str) -> Iterator[None]:
    """Run a timm / open_clip pretrained download; any failure becomes one clear line.

    When the hub is unreachable the download runs in huggingface_hub's offline mode, so a
    cached file still loads and a missing one fails immediately.
    """
    offline_patch = None
    try:
        from huggingface_hub import constants

        if not constants.HF_HUB_OFFLINE and not hub_reachable():
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


def timm_pretrained_state(name: str, what: str) -> dict[str, torch.Tensor]:
    """timm's pretrained weights for ``name`` (its Hugging Face hub copy, via timm's own
    loader and cache) as a state dict at the native grid, without building a model first:
    so an offline machine fails in seconds, and giant needs no extra model in memory.
    The keys are the hub file's own: a family converts an official layout itself."""
    import timm
    from timm.models import get_pretrained_cfg, load_state_dict_from_hf

    cfg = get_pretrained_cfg(name)
    if cfg is None or not cfg.hf_hub_id:  # pragma: no cover - every DINO tag has one
        with hub_download(what):
            return timm.create_model(name, pretrained=True, num_classes=0).state_dict()
    with hub_download(what):
        if cfg.hf_hub_filename:
            state = load_state_dict_from_hf(cfg.hf_hub_id, cfg.hf_hub_filename)
        else:
            state = load_state_dict_from_hf(cfg.hf_hub_id)
    return dict(state)


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
