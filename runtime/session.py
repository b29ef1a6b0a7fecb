"""The one place that finds model files, builds onnxruntime sessions and picks providers.

Everything that runs a model (encoder, bench, search) goes through ``open_model``,
so provider choice, thread settings and the "no silent CPU fallback" rule live here.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ModelFileError, ProviderError, first_line
from .modelcheck import check_io, check_kind, check_output, check_weights
from .spec import ModelSpec, SpecError, read_spec_from_metadata

DEFAULT_MODELS_DIR = "onnx_models"
PROVIDER_CHOICES = ("auto", "cpu", "cuda", "tensorrt")
_ORT_NAMES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


def models_dir() -> Path:
    """Where model ids are looked up: ``$SIMX_MODELS_DIR``, else ``./onnx_models``."""
    return Path(os.environ.get("SIMX_MODELS_DIR", DEFAULT_MODELS_DIR))


def resolve_model_path(model: str | os.PathLike[str]) -> Path:
    """A path to an .onnx file, or an id such as ``dinov2-small`` found in ``models_dir()``.

    Only a regular file counts as a path: a folder that happens to carry the model's name
    (``--cache dinov2-small`` makes one) must not shadow the id.
    """
    p = Path(model)
    if p.is_file():
        return p
    if p.suffix == ".onnx" or os.sep in str(model):
        raise ModelFileError(f"model file not found: {p}")
    candidate = models_dir() / f"{model}.onnx"
    if candidate.is_file():
        return candidate
    where = models_dir().resolve()
    have = sorted(x.stem for x in models_dir().glob("*.onnx")) if models_dir().is_dir() else []
    env = "$SIMX_MODELS_DIR" if "SIMX_MODELS_DIR" in os.environ else "$SIMX_MODELS_DIR (unset: ./onnx_models)"
    msg = f"no model {str(model)!r}: not a file, and not in {where} (looked there by {env})"
    from . import registry

    try:
        msg += f"; it is in the catalogue but not exported: run `{registry.get(str(model)).export_command}`"
    except registry.UnknownModelError:
        msg += f"; models there: {', '.join(have)}" if have else "; export one with `simx export`"
    raise ModelFileError(msg)


def _ort():
    import onnxruntime as ort

    if hasattr(ort, "preload_dlls"):
        # onnxruntime-gpu >= 1.21 can load the CUDA/cuDNN libraries that pip installed;
        # without this, CUDA silently fails to register on many hosts.
        try:
            ort.preload_dlls()
        except Exception:  # pragma: no cover - best effort, reported via providers
            pass
    return ort


def available_providers() -> list[str]:
    return list(_ort().get_available_providers())


def pick_providers(provider: str) -> list[str]:
    """The provider list to ask onnxruntime for. Asking for one that is absent is an error."""
    if provider not in PROVIDER_CHOICES:
        raise ProviderError(f"unknown provider {provider!r}; choose from {', '.join(PROVIDER_CHOICES)}")
    available = available_providers()
    if provider == "auto":
        order = [_ORT_NAMES["cuda"], _ORT_NAMES["cpu"]]
        return [p for p in order if p in available] or [_ORT_NAMES["cpu"]]
    wanted = _ORT_NAMES[provider]
    if wanted not in available:
        raise ProviderError(
            f"provider {provider!r} ({wanted}) is not available in this onnxruntime "
            f"(available: {', '.join(available)}); install simx-embed[gpu] for CUDA"
        )
    chain = [wanted]
    if provider == "tensorrt" and _ORT_NAMES["cuda"] in available:
        chain.append(_ORT_NAMES["cuda"])
    return chain + ([_ORT_NAMES["cpu"]] if wanted != _ORT_NAMES["cpu"] else [])


def session_options(threads: int | None = None) -> Any:
    """Session options shared by every simx session.

    - ``threads`` sets intra-op threads (default: onnxruntime's, one per physical core).
      Inter-op parallelism stays at 1: these graphs are a single chain of ops, and a
      second pool would only compete with the decode workers (see simx.encoder).
    - Memory: onnxruntime's CPU arena and memory-pattern planning stay on (their defaults).
      The arena keeps the largest batch's activations after the first call and reuses
      them, so steady-state calls allocate nothing; the price is that a process's RSS
      stays at its peak batch (DINOv2-S at batch 32: a few hundred MB). Patterns are
      planned per input shape, so a run with one batch size (plus one short last batch)
      plans twice and then reuses.
    """
    ort = _ort()
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.inter_op_num_threads = 1
    if threads:
        so.intra_op_num_threads = int(threads)
    so.log_severity_level = 3
    return so


@dataclass
class ModelSession:
    """An onnxruntime session plus the spec read from the model file."""

    path: Path
    spec: ModelSpec
    session: Any
    providers: list[str]  # what the session actually got

    @property
    def on_gpu(self) -> bool:
        return self.providers[0] != _ORT_NAMES["cpu"]

    def run(self, pixels: np.ndarray) -> np.ndarray:
        """Run a float32 [B, 3, S, S] batch and return [B, D], L2-normalized if the spec says so."""
        if self.on_gpu:
            # IO binding: one host-to-device copy of the batch and an output allocated on
            # the device, instead of onnxruntime's staging copies around session.run.
            binding = self.session.io_binding()
            binding.bind_cpu_input(self.spec.input_name, np.ascontiguousarray(pixels))
            binding.bind_output(self.spec.output_name, "cuda")
            self.session.run_with_iobinding(binding)
            out = binding.copy_outputs_to_cpu()[0]
        else:
            out = self.session.run([self.spec.output_name], {self.spec.input_name: pixels})[0]
        out = np.asarray(out, dtype=np.float32)
        check_output(self.path, self.spec, out, len(pixels))
        if self.spec.normalize:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out


def read_spec(path: str | os.PathLike[str]) -> ModelSpec:
    """Read the simx spec of a model file without building an inference session."""
    return open_model(path, provider="cpu", _spec_only=True).spec


def open_model(
    model: str | os.PathLike[str],
    provider: str = "auto",
    threads: int | None = None,
    _spec_only: bool = False,
    kind: str = "image",
) -> ModelSession:
    """Open an exported simx model. Every failure is a ModelFileError or ProviderError with one line.

    The graph's inputs and outputs are checked against the spec, and (unless only the
    spec is wanted) the weights against the hash recorded at export and the model's
    ``kind`` ("image" or "text") against what the caller needs.
    """
    path = resolve_model_path(model)
    ort = _ort()
    chain = pick_providers(provider)
    so = session_options(threads)
    if _spec_only:
        # Fastest path to the metadata: no graph optimisation work.
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        chain = [_ORT_NAMES["cpu"]]
    try:
        sess = ort.InferenceSession(str(path), sess_options=so, providers=chain)
    except Exception as e:  # onnxruntime raises its own exception types per failure
        raise ModelFileError(f"{path}: not a loadable ONNX model ({first_line(e)})") from None
    try:
        spec = read_spec_from_metadata(sess.get_modelmeta().custom_metadata_map, where=str(path))
    except SpecError as e:
        raise ModelFileError(f"{path}: {e}") from None
    if not _spec_only:
        check_kind(path, spec, kind)
    check_io(path, spec, sess)
    got = list(sess.get_providers())
    if not _spec_only:
        check_weights(path, spec)
        if provider in ("cuda", "tensorrt") and got[0] != chain[0]:
            raise ProviderError(f"asked for {provider} but onnxruntime ran the session on {got[0]}")
        if spec.precision == "fp16" and got[0] == _ORT_NAMES["cpu"]:
            warnings.warn(
                f"{path.name} is an fp16 model running on the CPU: it will be slow; "
                "use the fp32 or int8 export there",
                RuntimeWarning,
                stacklevel=2,
            )
    return ModelSession(path=path, spec=spec, session=sess, providers=got)
