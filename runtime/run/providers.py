"""The execution providers simx knows, as data: one table read by the CLI, the session
builder, the benchmark and the sim-bench config reader.

Why a table: the same list of names used to be written by hand in six places, and each
copy drifted (one knew ``tensorrt``, another did not). A row says what a provider is
called in simx and in onnxruntime, which device it runs on, which pip extra installs it,
which precisions it can run an fp32 file at, and its default options; the functions
below turn a row plus a model into the exact options onnxruntime (or OpenVINO) gets.

Precisions are *runtime* choices on one verified fp32 file: bf16 through OpenVINO on a
CPU with bf16 units, fp16 through TensorRT. Files exported at fp16 or int8 run at their
own precision on any provider that can load them.

Two OpenVINO rows, because the onnxruntime plugin (``onnxruntime-ep-openvino`` 1.8)
offers devices for Intel CPUs only: on an AMD CPU ``get_ep_devices()`` lists no
OpenVINO device at all (upstream: microsoft/onnxruntime#31981). ``openvino`` is the
plugin inside onnxruntime; ``openvino-runtime`` runs the same file with OpenVINO's own
runtime, which does run on AMD (bf16 on avx512_bf16).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simx.core.errors import ProviderError

PRECISIONS = ("fp32", "fp16", "bf16", "int8")
PRECISION_CHOICES = ("auto", "fp32", "fp16", "bf16")  # what a user may ask for at run time
# OpenVINO's names for the inference precision hint.
_OV_HINT = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
# TensorRT's dynamic-batch profile: the engine is built for batches min..max, tuned at opt.
TRT_PROFILE = {"min": 1, "opt": 8, "max": 64}


@dataclass(frozen=True)
class Provider:
    """One row of the table."""

    name: str  # simx's name: --provider NAME, Encoder(provider=NAME), sim-bench ``device:``
    ort_name: str | None  # onnxruntime's EP name; None for a backend outside onnxruntime
    device: str  # "cpu" or "cuda": decides IO binding, default batch size and decode pool
    extra: str  # what installs it
    precisions: tuple[str, ...]  # runtime precisions for an fp32 file; the first is the default
    options: Mapping[str, str] = field(default_factory=dict)  # defaults; user options win
    plugin: str | None = None  # Python module of an EP plugin library, registered on first use
    chain: tuple[str, ...] = ()  # simx names asked for behind it, in order
    note: str = ""

    @property
    def on_gpu(self) -> bool:
        return self.device == "cuda"


PROVIDERS: dict[str, Provider] = {p.name: p for p in (
    Provider("cpu", "CPUExecutionProvider", "cpu", "simx-embed[cpu]", ("fp32",),
             note="onnxruntime's own kernels; batch-invariant fp32"),
    Provider("cuda", "CUDAExecutionProvider", "cuda", "simx-embed[gpu]", ("fp32",),
             options={"device_id": "0"}, chain=("cpu",),
             note="fp16 from an fp16 file (simx export ... --precision fp16)"),
    Provider("tensorrt", "TensorrtExecutionProvider", "cuda", "simx-embed[gpu]", ("fp32", "fp16"),
             options={"device_id": "0", "trt_engine_cache_enable": "True",
                      "trt_timing_cache_enable": "True"},
             chain=("cuda", "cpu"), note="fp16 through trt_fp16_enable; engines cached"),
    Provider("openvino", "OpenVINOExecutionProvider", "cpu", "simx-embed[openvino]",
             ("fp32", "bf16"), options={"device_type": "CPU"}, plugin="onnxruntime_ep_openvino",
             note="onnxruntime's OpenVINO plugin; Intel CPUs only (microsoft/onnxruntime#31981)"),
    Provider("openvino-runtime", None, "cpu", "simx-embed[openvino]", ("fp32", "bf16"),
             note="OpenVINO's own runtime on the same file; any x86 CPU"),
)}
ALIASES = {"gpu": "cuda", "trt": "tensorrt", "ov": "openvino"}
CHOICES = ("auto", *PROVIDERS)
# ``auto`` without calibration: the first of these that this host offers.
AUTO_ORDER = ("cuda", "cpu")


def get(name: str) -> Provider:
    """The row for a simx provider name (or alias). Unknown names list the valid ones."""
    key = ALIASES.get(str(name).lower(), str(name).lower())
    if key not in PROVIDERS:
        raise ProviderError(f"unknown provider {name!r}; choose from {', '.join(CHOICES)}")
    return PROVIDERS[key]


def by_ort_name(ort_name: str) -> Provider | None:
    """The row of an onnxruntime EP name (as ``session.get_providers()`` reports it)."""
    return next((p for p in PROVIDERS.values() if p.ort_name == ort_name), None)


def check_precision(precision: str) -> str:
    if precision not in PRECISION_CHOICES:
        raise ProviderError(f"unknown precision {precision!r}; choose from {', '.join(PRECISION_CHOICES)}")
    return precision


# --------------------------------------------------------------------------- the host
def cpu_flags() -> frozenset[str]:
    """The ISA flags of the first CPU in /proc/cpuinfo (empty off Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def host_bf16(flags: Iterable[str] | None = None) -> bool:
    """Whether this CPU has bf16 units (Intel AMX-BF16, or AVX512-BF16 on Intel and AMD Zen 4).

    Without them OpenVINO emulates bf16, slower than f32, so simx runs f32 there.
    """
    f = cpu_flags() if flags is None else frozenset(flags)
    return bool({"amx_bf16", "avx512_bf16"} & f)


def fast_units(flags: Iterable[str] | None = None) -> list[str]:
    """The CPU's matrix / low-precision units, for reports."""
    f = cpu_flags() if flags is None else frozenset(flags)
    return sorted(f & {"amx_bf16", "amx_int8", "amx_tile", "avx512_bf16", "avx512_vnni",
                       "avx_vnni", "avx512f", "avx2", "avx512_fp16"})


def user_cache_dir() -> Path:
    """Where simx keeps per-user state (auto choices, TensorRT engines).

    ``$SIMX_USER_CACHE`` (tests point it at a tmp folder), else ``$XDG_CACHE_HOME/simx``,
    else ``~/.cache/simx``.
    """
    if os.environ.get("SIMX_USER_CACHE"):
        return Path(os.environ["SIMX_USER_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "simx"


# --------------------------------------------------------------------------- options
def parse_options(items: Iterable[str]) -> dict[str, str]:
    """``--provider-option k=v`` values as a dict; a value without ``=`` is an error."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise ProviderError(f"provider option {item!r} is not KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


def openvino_config(precision: str, threads: int | None) -> dict[str, str]:
    """OpenVINO CPU properties for a run at ``precision`` with ``threads`` threads.

    Measured trap: the onnxruntime plugin ignores its provider options ``precision`` and
    ``num_of_threads`` (it only warns), so both go through OpenVINO's own properties
    (the plugin's ``load_config``, or ``compile_model`` for the runtime).
    """
    if precision not in PRECISIONS:
        raise ProviderError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    # An int8 (QDQ) or fp16 file keeps its own arithmetic; the hint only governs float ops.
    hint = _OV_HINT["bf16"] if precision == "bf16" else _OV_HINT["fp32"]
    cfg = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        cfg["INFERENCE_NUM_THREADS"] = str(int(threads))
    return cfg


def trt_shapes(input_name: str, image_size: int, batch: int) -> str:
    return f"{input_name}:{batch}x3x{image_size}x{image_size}"


def ep_options(
    provider: Provider,
    *,
    precision: str = "fp32",
    threads: int | None = None,
    device_id: int = 0,
    input_name: str = "pixel_values",
    image_size: int | None = 224,
    user: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The provider options onnxruntime gets for ``provider``: the table's defaults, then
    what this run needs (device, precision, TensorRT profile and engine cache), then the
    user's own ``--provider-option`` values, which win."""
    opts = dict(provider.options)
    if provider.on_gpu:
        opts["device_id"] = str(int(device_id))
    if provider.name == "tensorrt":
        opts["trt_fp16_enable"] = str(precision == "fp16")
        opts["trt_engine_cache_path"] = str(user_cache_dir() / "tensorrt")
        opts["trt_timing_cache_path"] = str(user_cache_dir() / "tensorrt")
        for key in ("min", "opt", "max") if image_size else ():  # image models only
            opts[f"trt_profile_{key}_shapes"] = trt_shapes(input_name, image_size, TRT_PROFILE[key])
    if provider.name == "openvino":
        opts["load_config"] = json.dumps({"CPU": openvino_config(precision, threads)})
    opts.update({str(k): str(v) for k, v in (user or {}).items()})
    return opts


def install_hint(provider: Provider) -> str:
    return f"pip install {provider.extra}"


def table_rows() -> list[dict[str, Any]]:
    """The table as plain dicts (for ``simx info --providers``-style reports and tests)."""
    return [{"name": p.name, "onnxruntime": p.ort_name, "device": p.device, "extra": p.extra,
             "precisions": list(p.precisions), "note": p.note} for p in PROVIDERS.values()]
