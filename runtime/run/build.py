"""The one place that finds model files, builds onnxruntime sessions and picks providers.

A session is built here for one provider at one precision; ``simx.run.session.open_model``
adds the automatic choice on top. Provider choice, thread settings and the "no silent CPU
fallback" rule live here.
"""

from __future__ import annotations

import importlib
import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simx.run import providers
from simx.core.errors import ModelFileError, ProviderError, first_line
from simx.model.check import check_io, check_output, check_weights
from simx.model.header import read_spec as read_file_spec
from simx.model.spec import ModelSpec

DEFAULT_MODELS_DIR = "onnx_models"


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
    from simx.model import catalogue

    try:
        msg += f"; it is in the catalogue but not exported: run `{catalogue.get(str(model)).export_command}`"
    except catalogue.UnknownModelError:
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
    """onnxruntime's EP names that this onnxruntime build has (plugins not included)."""
    return list(_ort().get_available_providers())


_REGISTERED: set[str] = set()


def _plugin_devices(p: providers.Provider) -> list[Any]:
    """The CPU devices an EP plugin offers, registering its library on first use."""
    ort = _ort()
    try:
        mod = importlib.import_module(str(p.plugin))
    except ImportError:
        raise ProviderError(f"provider {p.name!r} needs its plugin: {providers.install_hint(p)}") from None
    if p.name not in _REGISTERED:
        try:
            ort.register_execution_provider_library(p.ort_name, mod.get_library_path())
        except Exception as e:  # registering twice in one process is the only benign failure
            if "already" not in str(e).lower():
                raise ProviderError(f"cannot register the {p.ort_name} plugin: {first_line(e)}") from None
        _REGISTERED.add(p.name)
    return [d for d in ort.get_ep_devices()
            if d.ep_name == p.ort_name and d.device.type == ort.OrtHardwareDeviceType.CPU]


def check_available(name: str) -> providers.Provider:
    """The table row for ``name``, if this host can run it; otherwise a ProviderError that
    says why and what to install (or use) instead."""
    p = providers.get(name)
    if p.name == "cpu":
        return p
    if p.plugin:
        if not _plugin_devices(p):
            from simx.core.machine import cpu_model

            raise ProviderError(
                f"the {p.ort_name} plugin offers no device for this CPU ({cpu_model()}): "
                "onnxruntime-ep-openvino lists Intel CPUs only (microsoft/onnxruntime#31981); "
                "use --provider openvino-runtime (OpenVINO's own runtime, same file)")
        return p
    if p.ort_name is None:
        try:
            import openvino  # noqa: F401
        except ImportError:
            raise ProviderError(f"provider {p.name!r} needs OpenVINO: {providers.install_hint(p)}") from None
        return p
    have = available_providers()
    if p.ort_name not in have:
        raise ProviderError(
            f"provider {p.name!r} ({p.ort_name}) is not available in this onnxruntime "
            f"(available: {', '.join(have)}); {providers.install_hint(p)}")
    return p


def resolve_provider(provider: str, precision: str | None = None) -> providers.Provider:
    """``auto`` (without calibration) as one row: CUDA when present, else the CPU; for a
    precision other than fp32, the first usable row that runs it."""
    if provider != "auto":
        return check_available(provider)
    if precision in (None, "fp32"):
        order = [n for n in providers.AUTO_ORDER]
    else:
        order = [n for n, p in providers.PROVIDERS.items() if precision in p.precisions]
    for name in order:
        try:
            p = check_available(name)
        except ProviderError:
            continue
        if precision != "bf16" or providers.host_bf16():
            return p
    raise ProviderError(f"no provider on this host runs {precision}")


def pick_providers(provider: str) -> list[str]:
    """The onnxruntime EP chain for ``provider`` (its row, then the rows behind it that
    this build has). Asking for one that is absent is an error."""
    p = resolve_provider(provider)
    if p.ort_name is None:
        return [providers.PROVIDERS["cpu"].ort_name]  # type: ignore[list-item]
    have = set(available_providers())
    chain = [p.ort_name] + [providers.PROVIDERS[c].ort_name for c in p.chain
                            if providers.PROVIDERS[c].ort_name in have]
    return [str(x) for x in chain]


def resolve_precision(p: providers.Provider, spec: ModelSpec, requested: str | None) -> str:
    """The precision a session will run at. Files exported at fp16 or int8 run at their own
    precision; an fp32 file runs at ``requested`` when the row and the host can do it."""
    file = spec.precision
    if requested is not None:
        providers.check_precision(requested)
    if file != "fp32":
        if requested not in (None, file):
            raise ProviderError(f"{spec.id} is an {file} file; runtime precisions apply to fp32 "
                                f"files (asked for {requested})")
        return file
    want = requested or "fp32"
    if want not in p.precisions:
        who = [n for n, r in providers.PROVIDERS.items() if want in r.precisions]
        extra = " or an fp16 export (simx export ... --precision fp16)" if want == "fp16" else ""
        raise ProviderError(f"provider {p.name!r} runs an fp32 file at {', '.join(p.precisions)}; "
                            f"{want} runs through {', '.join(who)}{extra}")
    if want == "bf16" and not providers.host_bf16():
        raise ProviderError("this CPU has no bf16 units (neither amx_bf16 nor avx512_bf16): "
                            "bf16 would be emulated and slower than fp32; use fp32")
    return want


class OpenVINOSession:
    """OpenVINO's own runtime behind the one method ``ModelSession`` uses (``run``).

    One infer request is reused under a lock: OpenVINO's output tensors alias the
    request's buffers, so results are copied out before the next call can overwrite them.
    """

    def __init__(self, path: Path, config: dict[str, str]) -> None:
        import openvino as ov

        self.compiled = ov.Core().compile_model(str(path), "CPU", config)
        self._request = self.compiled.create_infer_request()
        self._lock = threading.Lock()
        hint = str(self.compiled.get_property("INFERENCE_PRECISION_HINT")).lower()
        self.precision = "bf16" if "bf16" in hint or "bfloat16" in hint else (
            "fp16" if "f16" in hint or "float16" in hint else "fp32")

    def run(self, output_names: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        with self._lock:
            res = self._request.infer(feeds)
            by_name = {port.get_any_name(): np.array(v, copy=True) for port, v in res.items()}
        return [by_name[n] for n in output_names] if output_names else list(by_name.values())

    def get_providers(self) -> list[str]:
        return ["openvino-runtime"]


def session_options(threads: int | None = None) -> Any:
    """Session options shared by every simx session.

    - ``threads`` sets intra-op threads (default: onnxruntime's, one per physical core).
      Inter-op parallelism stays at 1: these graphs are a single chain of ops, and a
      second pool would only compete with the decode workers (see simx.run.encoder).
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
    """An inference session plus the spec read from the model file, and what really ran."""

    path: Path
    spec: ModelSpec
    session: Any
    providers: list[str]  # what the session actually got (onnxruntime's names)
    provider: str = "cpu"  # simx's name of the row that runs the model
    precision: str = "fp32"  # the precision that runs: the file's, or bf16 / fp16 at run time
    device: str = "cpu"
    choice: dict[str, Any] | None = None  # what ``auto`` measured, when it chose

    @property
    def on_gpu(self) -> bool:
        return self.device == "cuda"

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


def read_spec(model: str | os.PathLike[str]) -> ModelSpec:
    """The simx spec of a model file (path or exported id), checked against its graph's
    inputs and outputs, read off the file without building an inference session."""
    return read_file_spec(resolve_model_path(model))


def _load(path: Path, so: Any, **kw: Any) -> Any:
    try:
        return _ort().InferenceSession(str(path), sess_options=so, **kw)
    except Exception as e:  # onnxruntime raises its own exception types per failure
        raise ModelFileError(f"{path}: not a loadable ONNX model ({first_line(e)})") from None


def build_session(
    model: str | os.PathLike[str],
    provider: str = "auto",
    threads: int | None = None,
    kind: str = "image",
    *,
    precision: str | None = None,
    provider_options: dict[str, str] | None = None,
    device_id: int = 0,
) -> ModelSession:
    """Open an exported simx model. Every failure is a ModelFileError or ProviderError with one line.

    The graph's inputs and outputs are checked against the spec (as the file declares them,
    then as onnxruntime loaded them), the weights against the hash recorded at export, and
    the model's ``kind`` ("image" or "text") against what the caller needs.

    ``precision`` None runs the file at its own precision (``"auto"`` is
    ``simx.run.session.open_model``'s). ``provider_options`` are merged over the table's
    options (simx.run.providers).
    """
    path = resolve_model_path(model)
    if precision == "auto":
        raise ValueError("precision 'auto' is chosen by simx.run.session.open_model, not here")
    row = resolve_provider(provider, precision)
    # The spec first, off the file: the options depend on it (input name and size for
    # TensorRT's profile, the file's precision), and OpenVINO's runtime reads no metadata.
    spec = read_file_spec(path, kind)
    if row.name == "cpu":
        sess = _load(path, session_options(threads), providers=[row.ort_name])
    ran = resolve_precision(row, spec, precision)
    image_size = spec.preprocess.crop if kind == "image" else None
    opts = providers.ep_options(row, precision=ran, threads=threads, device_id=device_id,
                                input_name=spec.input_name, image_size=image_size,
                                user=provider_options)
    if row.name == "cpu":
        got = list(sess.get_providers())
    else:
        sess, got, ran = _build(path, row, ran, threads, opts, provider_options)
    if row.ort_name is not None:
        check_io(path, spec, sess)  # what onnxruntime loaded, too
    check_weights(path, spec)
    if spec.precision == "fp16" and row.name == "cpu":
        warnings.warn(
            f"{path.name} is an fp16 model running on the CPU: it will be slow; "
            "use the fp32 or int8 export there",
            RuntimeWarning,
            stacklevel=2,
        )
    return ModelSession(path=path, spec=spec, session=sess, providers=got, provider=row.name,
                        precision=ran, device=row.device)


def _build(path: Path, row: providers.Provider, ran: str, threads: int | None,
           opts: dict[str, str], provider_options: dict[str, str] | None) -> tuple[Any, list[str], str]:
    """A session of ``row`` on the file at ``path``: (session, providers it got, precision
    that runs). Refuses a session that onnxruntime quietly put on another provider."""
    if row.ort_name is None:  # OpenVINO's own runtime
        cfg = providers.openvino_config(ran, threads) | dict(provider_options or {})
        try:
            ov = OpenVINOSession(path, cfg)
        except Exception as e:
            raise ProviderError(f"OpenVINO cannot compile {path.name}: {first_line(e)}") from None
        if ran == "bf16" and ov.precision != "bf16":
            raise ProviderError(f"asked OpenVINO for bf16 but it compiled {path.name} at {ov.precision}")
        # fp16 / int8 files run at their own precision; fp32 files at what OpenVINO compiled.
        return ov, ov.get_providers(), ov.precision if ran in ("fp32", "bf16") else ran
    so = session_options(threads)
    if row.plugin:
        so.add_provider_for_devices(_plugin_devices(row), opts)
        sess = _load(path, so)
    else:
        chain = pick_providers(row.name)
        sess = _load(path, so, providers=chain, provider_options=[opts] + [{} for _ in chain[1:]])
    got = list(sess.get_providers())
    if got[0] != row.ort_name:
        raise ProviderError(f"asked for {row.name} but onnxruntime ran the session on {got[0]}")
    return sess, got, ran


def open_graph(path: str | os.PathLike[str], provider: str, precision: str = "fp32",
               threads: int | None = None, device_id: int = 0) -> tuple[Any, str]:
    """A plain ONNX graph (no simx spec: the benchmark's reference GEMM) on ``provider`` at
    ``precision``, built the same way a model's session is. Returns (session, precision)."""
    row = check_available(provider)
    if precision not in row.precisions and precision != "fp32":
        raise ProviderError(f"provider {row.name!r} does not run {precision}")
    opts = providers.ep_options(row, precision=precision, threads=threads, device_id=device_id,
                                image_size=None)
    if row.name == "cpu":
        return _load(Path(path), session_options(threads), providers=[row.ort_name]), precision
    sess, _got, ran = _build(Path(path), row, precision, threads, opts, None)
    return sess, ran

