"""Parity of an exported file against the torch module it came from.

Run before the file is renamed into place; any failure fails the export. The inputs:

* real photos bundled with scikit-image, preprocessed the reference way (PIL +
  torchvision ``Resize -> CenterCrop -> ToTensor -> Normalize`` built from the model's
  PreprocessSpec), at batch 1 and batch 3;
* seeded random tensors at batch 1 and batch 3 (inputs no photo produces).

The file is opened through the runtime's own loader (``simx.run.session.open_model``) on
the CPU provider, so verification also proves the runtime can read the file's spec.

Gates (``GATES``): fp32 must match to min cosine >= 0.99999 and max abs <= 1e-4 x
max|ref| on every input; int8 and fp16 are compared with the torch fp32 output on the
photos (cosine >= 0.99 / 0.999). Distinct photos must give distinct embeddings
(pairwise cosine < 0.98), which catches a collapsed model that would pass any parity test.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from simx.core.errors import SimxError, first_line
from simx.model.spec import PreprocessSpec

from . import calibration

PHOTOS = calibration.GATE_PHOTOS  # batch 1: the first; batch 3: the rest
RANDOM_SEED = 1234
MAX_PAIRWISE_COSINE = 0.98


@dataclass(frozen=True)
class Gate:
    min_cosine: float
    max_abs_rel: float | None  # max abs error / max |ref|; None: not gated
    random_inputs: bool  # whether random tensors are gated too


#: int8 gates beyond cosine (``int8_gates``): batch invariance of static files, and
#: retrieval kept against torch fp32 on the evaluation set (``simx.export.calibration``).
BATCH_INVARIANCE_REL = 1e-5  # max |batch 8 - one at a time| / max |e|
NEIGHBOURS = 10
MIN_NEIGHBOUR_OVERLAP = 0.9  # mean over queries of |top-10 int8 ∩ top-10 fp32| / 10
INVARIANCE_BATCH = 8

GATES: dict[str, Gate] = {
    "fp32": Gate(min_cosine=0.99999, max_abs_rel=1e-4, random_inputs=True),
    "fp16": Gate(min_cosine=0.999, max_abs_rel=None, random_inputs=False),
    "int8": Gate(min_cosine=0.99, max_abs_rel=None, random_inputs=False),
}


class VerificationError(SimxError):
    """The exported file does not reproduce the torch model closely enough."""


@dataclass
class Probe:
    """One batch fed to both torch and onnxruntime."""

    name: str
    kind: str  # "photos" | "random"
    pixels: np.ndarray  # float32 [B, 3, S, S]


def _photo(name: str):
    """A bundled scikit-image photo as an RGB PIL image (no network)."""
    from PIL import Image

    return Image.fromarray(calibration.photo(name))


def reference_transform(pre: PreprocessSpec):
    """The reference every port is judged by: torchvision's eval transform for
    shortest-side bicubic (DINOv2, DINOv3, CLIP ViTs), and open_clip's own
    ``image_transform`` for the other modes its tags use (squash, longest, bilinear)."""
    from torchvision import transforms as T

    if pre.resize_mode == "shortest" and pre.interpolation == "bicubic":
        return T.Compose(
            [
                T.Resize(pre.resize, interpolation=T.InterpolationMode.BICUBIC),
                T.CenterCrop(pre.crop),
                T.ToTensor(),
                T.Normalize(pre.mean, pre.std),
            ]
        )
    if pre.resize != pre.crop:
        raise SimxError(f"no reference transform for {pre.resize_mode}/{pre.interpolation} "
                        f"with resize {pre.resize} != crop {pre.crop}")
    from open_clip.transform import image_transform

    return image_transform(pre.crop, is_train=False, mean=pre.mean, std=pre.std,
                           resize_mode=pre.resize_mode, interpolation=pre.interpolation,
                           fill_color=pre.fill)


def probes(pre: PreprocessSpec) -> list[Probe]:
    """The verification batches: photos at batch 1 and 3, random tensors at batch 1 and 3."""
    tf = reference_transform(pre)
    photos = torch.stack([tf(_photo(n)) for n in PHOTOS]).numpy().astype(np.float32)
    g = torch.Generator().manual_seed(RANDOM_SEED)
    noise = torch.randn(4, 3, pre.crop, pre.crop, generator=g).numpy()
    return [
        Probe("photos_b1", "photos", photos[:1]),
        Probe("photos_b3", "photos", photos[1:4]),
        Probe("random_b1", "random", noise[:1]),
        Probe("random_b3", "random", noise[1:4]),
    ]


@torch.no_grad()
def torch_reference(module: nn.Module, batches: list[Probe]) -> list[np.ndarray]:
    """The torch fp32 output for each probe, batched the same way as the ONNX run."""
    module.eval()
    return [module(torch.from_numpy(p.pixels)).float().numpy() for p in batches]


@torch.no_grad()
def gflops(module: nn.Module, image_size: int) -> float:
    """Forward GFLOPs for one image (multiply-add = 2 FLOPs), counted by torch.

    Attention runs as plain matmuls while counting: the CPU flash-attention kernel and
    nn.MultiheadAttention's fused fast path are invisible to FlopCounterMode (they would
    drop the attention products, and OpenCLIP's q/k/v projections, from the count).
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 3, image_size, image_size)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            module(x)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return round(counter.get_total_flops() / 1e9, 3)


def check_graph(path: Path, what: str = "model") -> None:
    """onnx.checker's full check (types and shapes) on the file as written."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:  # ValidationError, InferenceError
        raise VerificationError(f"{what}: onnx.checker rejected the graph: {first_line(e)}") from None


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    num = (a64 * b64).sum(axis=1)
    den = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    return num / np.maximum(den, 1e-30)


def _cosines_between_rows(x: np.ndarray) -> np.ndarray:
    """[N, N] cosines between the rows of ``x`` (float64), -inf on the diagonal."""
    x64 = x.astype(np.float64)
    x64 /= np.maximum(np.linalg.norm(x64, axis=1, keepdims=True), 1e-30)
    sim = x64 @ x64.T
    np.fill_diagonal(sim, -np.inf)
    return sim


def max_pairwise_cosine(x: np.ndarray) -> float:
    return float(_cosines_between_rows(x).max())


def _measure(ms: Any, batches: list[Probe], refs: list[np.ndarray],
             what: str) -> tuple[dict[str, dict[str, float]], list[np.ndarray], list[np.ndarray]]:
    """Per probe kind: max abs error, max |ref| and min cosine of onnxruntime's output vs
    torch's; and the photo outputs and references, for the collapse and centred figures."""
    inp = ms.session.get_inputs()[0]
    in_dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
    figures: dict[str, dict[str, float]] = {}
    photo_outputs: list[np.ndarray] = []
    photo_refs: list[np.ndarray] = []
    for probe, ref in zip(batches, refs):
        out = ms.session.run([ms.spec.output_name], {inp.name: probe.pixels.astype(in_dtype)})[0]
        out = np.asarray(out, dtype=np.float32)
        if out.shape != ref.shape:
            raise VerificationError(
                f"{what}: onnxruntime output {out.shape} for {probe.name}, torch {ref.shape}"
            )
        if not np.isfinite(out).all():
            raise VerificationError(f"{what}: onnxruntime output for {probe.name} is not finite")
        f = figures.setdefault(probe.kind, {"max_abs": 0.0, "ref_max_abs": 0.0, "min_cosine": 1.0})
        f["max_abs"] = max(f["max_abs"], float(np.abs(out - ref).max()))
        f["ref_max_abs"] = max(f["ref_max_abs"], float(np.abs(ref).max()))
        f["min_cosine"] = min(f["min_cosine"], float(_cosines(out, ref).min()))
        if probe.kind == "photos":
            photo_outputs.append(out)
            photo_refs.append(ref)
    return figures, photo_outputs, photo_refs


def _hold_to_gate(figures: dict[str, dict[str, float]], gated: list[str], gate: Any, what: str,
                  precision: str) -> None:
    for kind in gated:
        f = figures[kind]
        if f["min_cosine"] < gate.min_cosine:
            raise VerificationError(
                f"{what} ({precision}) differs from torch on {kind}: min cosine "
                f"{f['min_cosine']:.7f} < {gate.min_cosine}"
            )
        if gate.max_abs_rel is not None and f["max_abs"] > gate.max_abs_rel * f["ref_max_abs"]:
            raise VerificationError(
                f"{what} ({precision}) differs from torch on {kind}: max abs {f['max_abs']:.3g} "
                f"> {gate.max_abs_rel} x max|ref| ({f['ref_max_abs']:.3g})"
            )


def compare(
    path: Path,
    batches: list[Probe],
    refs: list[np.ndarray],
    precision: str = "fp32",
    what: str = "model",
    collapse: str = "refuse",
) -> dict[str, float]:
    """Run ``path`` on onnxruntime's CPU provider and hold it to the gate of ``precision``.

    Returns the parity figures the spec records; raises VerificationError on failure.
    ``collapse="warn"`` (the user's own checkpoint): near-identical embeddings of distinct
    photos are not a refusal; the figures then carry ``collapsed=1.0`` and the parity of
    the embeddings centred across the probe photos (``centred_min_cosine``), which stays
    meaningful when every raw embedding is nearly the same vector.
    """
    from simx.run.session import open_model

    gate = GATES[precision]
    with warnings.catch_warnings():  # "fp16 on the CPU is slow": expected, CPU is the judge
        warnings.simplefilter("ignore", RuntimeWarning)
        ms = open_model(path, provider="cpu")
    figures, photo_outputs, photo_refs = _measure(ms, batches, refs, what)
    gated = ["photos"] + (["random"] if gate.random_inputs else [])
    _hold_to_gate(figures, gated, gate, what, precision)
    pairwise = max_pairwise_cosine(np.concatenate(photo_outputs))
    outs_c, refs_c = np.concatenate(photo_outputs), np.concatenate(photo_refs)
    outs_c = outs_c - outs_c.mean(axis=0, keepdims=True)
    refs_c = refs_c - refs_c.mean(axis=0, keepdims=True)
    centred = float(_cosines(outs_c, refs_c).min())
    collapsed = pairwise >= MAX_PAIRWISE_COSINE
    if collapsed and collapse == "warn":
        pass  # the caller records and prints the warning
    elif collapsed:
        raise VerificationError(
            f"{what}: distinct photos get near-identical embeddings (cosine {pairwise:.4f} >= "
            f"{MAX_PAIRWISE_COSINE}); the model has collapsed"
        )
    g = {k: figures[k] for k in gated}
    return {
        # The gated figures over every gated input: what the spec's parity headline means.
        "max_abs": max(f["max_abs"] for f in g.values()),
        "min_cosine": min(f["min_cosine"] for f in g.values()),
        "max_abs_rel": max(f["max_abs"] / max(f["ref_max_abs"], 1e-30) for f in g.values()),
        "photos_max_abs": figures["photos"]["max_abs"],
        "photos_min_cosine": figures["photos"]["min_cosine"],
        "random_max_abs": figures["random"]["max_abs"],
        "random_min_cosine": figures["random"]["min_cosine"],
        "max_pairwise_cosine": pairwise,
        "centred_min_cosine": centred,
        "collapsed": float(collapsed),
        "n_images": float(sum(p.pixels.shape[0] for p in batches)),
    }


def top_k_neighbours(e: np.ndarray, k: int = NEIGHBOURS) -> np.ndarray:
    """Each row's ``k`` nearest other rows by cosine, as indices [N, k] (itself excluded)."""
    return np.argsort(-_cosines_between_rows(e), axis=1, kind="stable")[:, :k]


def neighbour_overlap(a: np.ndarray, b: np.ndarray, k: int = NEIGHBOURS) -> np.ndarray:
    """Per query, the share of its top-``k`` neighbours under ``a`` also found under ``b``."""
    na, nb = top_k_neighbours(a, k), top_k_neighbours(b, k)
    return np.array([len(set(x) & set(y)) / k for x, y in zip(na, nb)])


def int8_gates(
    path: Path,
    pixels: np.ndarray,
    ref: np.ndarray,
    *,
    batch_invariant: bool,
    what: str = "model",
) -> dict[str, float]:
    """The int8 file against torch fp32 on the evaluation set; raise VerificationError if
    it fails, else return the figures the spec records.

    * batch invariance (``batch_invariant``, static files): every image's embedding at
      batch 8 equals its embedding run alone, to ``BATCH_INVARIANCE_REL`` x max |e|;
    * retrieval: mean top-10 neighbour overlap with fp32 >= ``MIN_NEIGHBOUR_OVERLAP``.
      Static files run in batches of 8 here, dynamic ones one image at a time (as the
      Encoder runs each).
    """
    from simx.run.session import open_model

    ms = open_model(path, provider="cpu")
    name, out_name = ms.session.get_inputs()[0].name, ms.spec.output_name

    def run(x: np.ndarray) -> np.ndarray:
        return np.asarray(ms.session.run([out_name], {name: x})[0], np.float32)

    step = INVARIANCE_BATCH if batch_invariant else 1
    got = np.concatenate([run(pixels[i:i + step]) for i in range(0, len(pixels), step)])
    figures: dict[str, float] = {}
    if batch_invariant:
        n = min(len(pixels), 2 * INVARIANCE_BATCH)
        alone = np.concatenate([run(pixels[i:i + 1]) for i in range(n)])
        rel = float(np.abs(alone - got[:n]).max() / max(float(np.abs(alone).max()), 1e-30))
        if rel > BATCH_INVARIANCE_REL:
            raise VerificationError(
                f"{what} (int8) is not batch-invariant: batch {INVARIANCE_BATCH} differs from "
                f"one image at a time by {rel:.3g} x max|e| > {BATCH_INVARIANCE_REL}"
            )
        figures["batch_invariance_max_rel"] = rel
    overlap = neighbour_overlap(ref, got)
    if overlap.mean() < MIN_NEIGHBOUR_OVERLAP:
        raise VerificationError(
            f"{what} (int8) loses retrieval: top-{NEIGHBOURS} neighbour overlap with fp32 "
            f"{overlap.mean():.3f} < {MIN_NEIGHBOUR_OVERLAP} on {len(ref)} images"
        )
    figures.update({
        "eval_images": float(len(ref)),
        "eval_min_cosine": float(_cosines(got, ref).min()),
        "top10_overlap_mean": float(overlap.mean()),
        "top10_overlap_min": float(overlap.min()),
    })
    return figures
