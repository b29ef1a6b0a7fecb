"""``export_model``: one registry entry -> one verified, self-describing ``.onnx`` file.

Pipeline (each step in its own module):

1. ``families.build``: the torch module and its weights (pretrained / random / checkpoint);
2. ``verify.probes`` + ``verify.torch_reference``: torch outputs on real photos and random
   tensors, computed before export so the torch model can be freed early (giant models);
3. ``to_onnx.export_onnx``: dynamo export with a symbolic batch axis;
4. ``optimize.fuse_for_ort`` (graph fusions) and ``quantize.to_int8`` / ``to_fp16``
   (precision);
5. write under a temp name (``writer.AtomicModelWriter``), ``onnx.checker`` full check, onnxruntime parity against the
   torch outputs, then the spec (with the measured parity) into ``metadata_props["simx"]``
   and an atomic rename. Any failure leaves no file behind.
"""

from __future__ import annotations

import gc
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx

from simx.core.errors import SimxError, first_line
from simx.model.catalogue import ModelEntry
from simx.model.spec import METADATA_KEY, ModelSpec
from simx.model.weights_hash import weights_sha256
from simx.run.text import pair_id

from . import calibration, families, optimize, quantize, to_onnx, verify, writer
from . import text as text_tower
from .families import Built
from .weights import quiet_logging

PRECISIONS = ("fp32", "fp16", "int8")
MIN_OPSET = 18  # torch's dynamo exporter has no implementations below 18


MAX_TESTED_OPSET = 23  # newest opset exported and run here (onnxruntime 1.32)

Say = Callable[[str], None]


def _max_opset() -> int:
    """The newest opset this onnx knows, capped at the newest one tested."""
    import onnx.defs

    return min(onnx.defs.onnx_opset_version(), MAX_TESTED_OPSET)


def output_path(entry: ModelEntry, output_dir: Path, precision: str = "fp32") -> Path:
    """``<dir>/<id>.onnx`` for fp32, ``<dir>/<id>-int8.onnx`` / ``<id>-fp16.onnx`` otherwise."""
    suffix = "" if precision == "fp32" else f"-{precision}"
    return Path(output_dir) / f"{entry.id}{suffix}.onnx"


def _check_output_dir(output_dir: Path) -> None:
    """Create the folder and prove a file can be written there, before any slow work."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".simx-write-test.", dir=output_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise SimxError(f"cannot write to output dir {output_dir}: {reason}") from None


def _versions(family: str) -> dict[str, str]:
    import onnxruntime
    import torch

    v = {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
    v.update(families.family(family).versions())
    return v


def export_model(
    entry: ModelEntry,
    *,
    weights: str = "pretrained",
    output_dir: Path = Path("onnx_models"),
    image_size: int = 224,
    opset: int = 18,
    precision: str = "fp32",
    text: bool = False,
    log: Callable[[str], None] | None = None,
    int8: str = "static",
    tokenizer: str | Path | None = None,
) -> Path | list[Path]:
    """Export ``entry``'s image tower to ``output_dir`` and return the file's path
    (with ``text``: ``[image path, text path]``).

    ``weights``: "pretrained" (timm / open_clip download), "random" (seeded; speed tests),
    or a checkpoint path (recorded by sha256). ``precision``: fp32 (strict parity gate),
    int8 or fp16 (their own file and gate). ``text``: also export the OpenCLIP text tower.
    ``int8``: "static" (QDQ, activations calibrated on bundled photos, batch-invariant:
    the default) or "dynamic" (activation scales per batch; the Encoder runs it one image
    at a time). Both are also held to the retrieval gate (``verify.int8_gates``).
    Raises SimxError with a one-line message on any failure; then no file is left behind.
    """
    _check_request(entry, weights=weights, image_size=image_size, opset=opset,
                   precision=precision, text=text, int8=int8, tokenizer=tokenizer)
    output_dir = Path(output_dir)
    _check_output_dir(output_dir)
    say = log or (lambda _msg: None)
    started = time.perf_counter()

    say(f"[1/5] building {entry.id} in torch ({weights} weights, {image_size} px)")
    built = families.build(entry, weights, image_size)
    facts = _torch_facts(built, image_size, precision, int8)
    say(f"[2/5] exporting to ONNX (opset {opset}, symbolic batch axis)")
    model = to_onnx.export_onnx(built.module, image_size, opset, what=entry.id)
    built.module = None  # type: ignore[assignment]  # free torch weights before ORT loads its copy
    gc.collect()
    model, fusions = _optimise(model, entry.id, precision, _converter(precision, int8, facts))
    spec = _spec(entry, built, image_size=image_size, precision=precision, opset=opset,
                 gflops=facts.gflops, fusions=fusions,
                 quantization=_quantization_extra(precision, int8, facts))
    _check_output_dim(model, entry)
    path, spec = _write_verified(model, spec, facts, output_path(entry, output_dir, precision),
                                 int8=int8, started=started, say=say)
    del model
    gc.collect()
    writer.check_committed_weights(path, spec.weights_sha256)
    _report(path, spec, started, say)

    if text:
        with quiet_logging():  # open_clip's "initialized randomly" for --weights random
            text_path = text_tower.export_text_tower(
                entry, weights=weights, output_dir=output_dir, opset=opset, image_size=image_size,
                tokenizer=tokenizer, image_spec_hash=spec.embedding_hash())
        return [path, text_path]
    return path


def _check_request(entry: ModelEntry, *, weights: str, image_size: int, opset: int, precision: str,
                   text: bool, int8: str, tokenizer: str | Path | None) -> None:
    """Refuse a request that cannot succeed, before any slow work."""
    if precision not in PRECISIONS:
        raise SimxError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    families.check_image_size(entry, image_size)
    max_opset = _max_opset()
    if not MIN_OPSET <= opset <= max_opset:
        # Below 18 torch's exporter converts after the fact and may silently keep 18.
        raise SimxError(f"--opset {opset} is not supported; use {MIN_OPSET} to {max_opset}")
    if text and not entry.text:
        raise SimxError(f"{entry.id} has no text tower simx can export (OpenCLIP models with "
                        "the CLIP tokenizer have one)")
    if text:  # a missing tokenizer fails now, not after minutes of image export
        text_tower.preflight_tokenizer(entry, tokenizer)
    if weights not in ("pretrained", "random") and not Path(weights).is_file():
        raise SimxError(
            f"checkpoint not found: {weights} (--weights takes 'pretrained', 'random' or a file path)"
        )
    if int8 not in quantize.INT8_KINDS:
        raise SimxError(f"unknown int8 kind {int8!r}; choose from {', '.join(quantize.INT8_KINDS)}")


@dataclass
class _TorchFacts:
    """What the export needs from the torch module, taken before the module is freed."""

    batches: list[verify.Probe]  # the parity probes
    refs: list[np.ndarray]  # torch fp32 output for each probe
    gflops: float
    evaluation: verify.Probe | None = None  # int8: the retrieval evaluation set ...
    evaluation_ref: np.ndarray | None = None  # ... and its torch fp32 embeddings
    calibration: np.ndarray | None = None  # static int8: the calibration photos' pixels


def _torch_facts(built: Built, image_size: int, precision: str, int8: str) -> _TorchFacts:
    """Torch outputs on the parity probes, the GFLOPs, and for int8 the evaluation set's
    fp32 reference (and, static, the calibration photos, preprocessed the runtime's way)."""
    batches = verify.probes(built.preprocess)
    facts = _TorchFacts(batches, verify.torch_reference(built.module, batches),
                        verify.gflops(built.module, image_size))
    if precision == "int8":
        facts.evaluation = verify.Probe("evaluation", "evaluation", calibration.pixels(
            [a for _, a in calibration.evaluation_images()], built.preprocess))
        facts.evaluation_ref = verify.torch_reference(built.module, [facts.evaluation])[0]
        if int8 == "static":
            facts.calibration = calibration.pixels(calibration.calibration_images(),
                                                   built.preprocess)
    return facts


def _converter(precision: str, int8: str, facts: _TorchFacts
               ) -> Callable[[onnx.ModelProto], onnx.ModelProto] | None:
    """The precision conversion of the fused fp32 graph (None for fp32)."""
    if precision == "int8" and int8 == "static":
        calib = facts.calibration
        return lambda m: quantize.to_int8_static(m, calib)
    return getattr(quantize, f"to_{precision}") if precision != "fp32" else None


def _quantization_extra(precision: str, int8: str, facts: _TorchFacts) -> dict[str, object]:
    """What ``spec.extra`` records of the int8 recipe (nothing for fp32 / fp16)."""
    if precision != "int8":
        return {}
    if int8 != "static":
        return {"quantization": quantize.DYNAMIC}
    assert facts.calibration is not None
    return {"quantization": quantize.STATIC_QDQ, "calibration": {
        "method": quantize.STATIC_METHOD, "images": len(facts.calibration),
        "set": "simx.export.calibration: bundled skimage photos, mirrored, and centre crops"}}


def _optimise(model: onnx.ModelProto, what: str, precision: str,
              convert: Callable[[onnx.ModelProto], onnx.ModelProto] | None
              ) -> tuple[onnx.ModelProto, dict[str, int]]:
    """Graph fusions, then the precision conversion; a failure is one SimxError line."""
    try:
        # SkipLayerNormalization is slower than Add + LayerNormalization on ORT's CPU
        # kernels (benchmarks/results/precision.md), so only the GPU (fp16) file keeps it.
        model, fusions = optimize.fuse_for_ort(model, skip_layer_norm=(precision == "fp16"))
    except SimxError:
        raise
    except Exception as e:
        raise SimxError(f"graph optimisation of {what} failed: {first_line(e)}") from e
    if convert is not None:
        try:
            with quiet_logging():  # onnxruntime.quantization logs advice to root
                model = convert(model)
        except SimxError:
            raise
        except Exception as e:
            raise SimxError(f"{precision} conversion of {what} failed: {first_line(e)}") from e
    return model, fusions


def _spec(entry: ModelEntry, built: Built, *, image_size: int, precision: str, opset: int,
          gflops: float, fusions: dict[str, int], quantization: dict[str, object]) -> ModelSpec:
    """The provisional spec (no parity or weights hash yet) of the image file."""
    return ModelSpec(
        id=entry.id,
        family=entry.family,
        variant=entry.variant,
        source=entry.source,
        weights=built.weights,
        image_size=image_size,
        dim=entry.dim,
        normalize=built.normalize,
        preprocess=built.preprocess,
        precision=precision,
        opset=opset,
        input_name=to_onnx.INPUT_NAME,
        output_name=to_onnx.OUTPUT_NAME,
        gflops=gflops,
        fusions={k: int(v) for k, v in fusions.items()},
        extra={**built.extra, **quantization, "versions": _versions(entry.family),
               # the identity its text tower records too (simx.search.pair_id)
               **({"pair": pair_id(entry.id, entry.source, built.weights)} if entry.text else {})},
    )


def _check_output_dim(model: onnx.ModelProto, entry: ModelEntry) -> None:
    out_dims = model.graph.output[0].type.tensor_type.shape.dim
    if len(out_dims) != 2 or out_dims[1].dim_value not in (0, entry.dim):
        raise SimxError(f"{entry.id}: exported output shape does not end in the registry's dim {entry.dim}")


def _write_verified(model: onnx.ModelProto, spec: ModelSpec, facts: _TorchFacts, final: Path, *,
                    int8: str, started: float, say: Say) -> tuple[Path, ModelSpec]:
    """Write under a temp name, check and verify it, record the figures in the spec, and
    rename it into place; returns the final path and spec. A failure leaves no file."""
    external = writer.tensor_bytes(model) > writer.EXTERNAL_DATA_THRESHOLD
    with writer.AtomicModelWriter(final, external) as w:
        # Provisional spec first: verification opens the file through the runtime's loader.
        writer.set_metadata(model, METADATA_KEY, spec.to_json())
        tmp = w.write(model)
        say("[3/5] onnx.checker (full) on the written graph")
        verify.check_graph(tmp, what=f"{spec.id} ({spec.precision})")
        parity, warning = _parity(tmp, spec, facts, int8, say)
        spec = replace(
            spec,
            weights_sha256=weights_sha256(tmp),  # metadata excluded, so the final file agrees
            parity={k: float(v) for k, v in parity.items()},
            extra={**spec.extra, "export_seconds": round(time.perf_counter() - started, 1),
                   "external_data": external, **({"warning": warning} if warning else {})},
        )
        writer.set_metadata(model, METADATA_KEY, spec.to_json())
        return w.commit(model), spec


def _parity(tmp: Path, spec: ModelSpec, facts: _TorchFacts, int8: str,
            say: Say) -> tuple[dict[str, float], str | None]:
    """The written file against torch (and, int8, its extra gates): the parity figures,
    and the warning to record when a user's own weights collapse."""
    precision = spec.precision
    say(f"[4/5] parity against torch ({precision}, batches 1 and 3, photos and random tensors)")
    user_weights = spec.weights.startswith("sha256:")
    parity = verify.compare(tmp, facts.batches, facts.refs, precision, what=spec.id,
                            collapse="warn" if user_weights else "refuse")
    warning = None
    if parity.get("collapsed"):
        # The user's own checkpoint: their weights, their call; but say it loudly and
        # keep it in the file, since every similarity it gives will be near 1.
        warning = (f"WARNING: distinct photos get near-identical embeddings with these "
                   f"weights (max pairwise cosine {parity['max_pairwise_cosine']:.4f}); "
                   f"centred parity min cosine {parity['centred_min_cosine']:.6f}")
        say(warning)
    if precision == "int8":
        assert facts.evaluation is not None and facts.evaluation_ref is not None
        say("[4/5] int8 gates: batch invariance and top-10 neighbour overlap on "
            f"{len(facts.evaluation_ref)} images")
        parity.update(verify.int8_gates(tmp, facts.evaluation.pixels, facts.evaluation_ref,
                                        batch_invariant=(int8 == "static"), what=spec.id))
    return parity, warning


def _report(path: Path, spec: ModelSpec, started: float, say: Say) -> None:
    """The closing lines: what was written, its parity, and what its weights are."""
    data = path.with_name(path.name + ".data")
    size = path.stat().st_size + (data.stat().st_size if spec.extra["external_data"] else 0)
    parity = spec.parity
    say(f"[5/5] wrote {path} ({size / 2**20:.1f} MiB), weights sha256 {spec.weights_sha256[:12]}...")
    say(f"parity: min cosine {parity['min_cosine']:.6f}, max abs {parity['max_abs']:.3g} "
        f"({parity['max_abs_rel']:.2g} of max |ref|); "
        f"{'RANDOM weights: similarities are meaningless' if spec.weights == 'random' else spec.weights}; "
        f"{time.perf_counter() - started:.0f} s")
