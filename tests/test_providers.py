"""The provider table, the session builder's provider paths (OpenVINO, bf16, TensorRT and
CUDA options), ``precision="auto"`` and its cache, and a cache's provider/precision record."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from tiny_model import build_tiny_model, tiny  # noqa: E402,F401

from simx.run import autoselect as autoselect
from simx.run import providers
from simx.core.errors import ProviderError
from simx.run.session import check_available, open_model, resolve_precision


def _openvino_importable() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


needs_openvino = pytest.mark.skipif(not _openvino_importable(),
                                    reason="OpenVINO is not installed (pip install simx-embed[openvino])")


@pytest.fixture(autouse=True)
def user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Auto decisions and TensorRT engine paths go to a tmp folder, never ~/.cache."""
    d = tmp_path / "usercache"
    monkeypatch.setenv("SIMX_USER_CACHE", str(d))
    return d


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return autoselect.min_cosine(a, b)


def _pixels(n: int = 4, s: int = 32) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((n, 3, s, s)).astype(np.float32)


# ----------------------------------------------------------------------------- the table
def test_table_rows_and_aliases():
    assert providers.get("gpu").name == "cuda" and providers.get("CPU").name == "cpu"
    assert providers.get("trt").ort_name == "TensorrtExecutionProvider"
    ort_names = [p.ort_name for p in providers.PROVIDERS.values() if p.ort_name]
    assert len(ort_names) == len(set(ort_names))
    assert providers.by_ort_name("CUDAExecutionProvider").name == "cuda"
    assert {p.device for p in providers.PROVIDERS.values()} == {"cpu", "cuda"}
    assert providers.get("openvino").extra == "simx-embed[openvino]"
    assert "bf16" in providers.get("openvino-runtime").precisions
    assert providers.get("cpu").precisions == ("fp32",)
    rows = providers.table_rows()
    assert [r["name"] for r in rows] == list(providers.PROVIDERS)


def test_cli_choices_come_from_the_table():
    from simx.cli.app import main

    for name in ("embed", "bench", "search", "eval"):
        opt = next(p for p in main.commands[name].params if p.name == "provider")
        assert tuple(opt.type.choices) == providers.CHOICES, name
    for name in ("embed", "bench"):
        names = {p.name for p in main.commands[name].params}
        assert {"precision", "provider_options", "device_id"} <= names


def test_unknown_provider_lists_the_valid_ones(tiny):  # noqa: F811
    with pytest.raises(ProviderError) as e:
        open_model(tiny, provider="metal")
    for name in providers.CHOICES:
        assert name in str(e.value)
    with pytest.raises(ProviderError, match="unknown precision 'fp8'"):
        open_model(tiny, provider="cpu", precision="fp8")


def test_simbench_device_reads_the_table(tmp_path: Path):
    from simx.embed.simbench import ConfigError, load_method_config

    def cfg(device: str) -> Path:
        p = tmp_path / f"{device.replace(':', '_')}.yaml"
        p.write_text(f"method: dinov2\nvariant: small\ndevice: {device}\n")
        return p

    assert load_method_config(cfg("gpu"))["provider"] == "cuda"
    assert load_method_config(cfg("cuda:1"))["provider"] == "cuda"
    assert load_method_config(cfg("openvino"))["provider"] == "openvino"
    with pytest.raises(ConfigError, match="openvino-runtime"):
        load_method_config(cfg("metal"))


def test_provider_options_parse():
    assert providers.parse_options(["a=1", " b = x=y "]) == {"a": "1", "b": "x=y"}
    with pytest.raises(ProviderError, match="KEY=VALUE"):
        providers.parse_options(["novalue"])


# ----------------------------------------------------------------------------- GPU options
def test_tensorrt_options(user_cache: Path):
    opts = providers.ep_options(providers.get("tensorrt"), precision="fp16", device_id=1,
                                input_name="pixel_values", image_size=224,
                                user={"trt_max_workspace_size": "2147483648"})
    assert opts["trt_fp16_enable"] == "True" and opts["device_id"] == "1"
    assert opts["trt_engine_cache_enable"] == "True"
    assert Path(opts["trt_engine_cache_path"]).parent == user_cache
    assert opts["trt_profile_min_shapes"] == "pixel_values:1x3x224x224"
    assert opts["trt_profile_opt_shapes"] == "pixel_values:8x3x224x224"
    assert opts["trt_profile_max_shapes"] == "pixel_values:64x3x224x224"
    assert opts["trt_max_workspace_size"] == "2147483648"
    fp32 = providers.ep_options(providers.get("tensorrt"), precision="fp32")
    assert fp32["trt_fp16_enable"] == "False"
    # The user's options win over simx's.
    assert providers.ep_options(providers.get("tensorrt"), user={"trt_fp16_enable": "True"}
                                )["trt_fp16_enable"] == "True"
    # A text tower (no image size) gets no image profile.
    assert "trt_profile_min_shapes" not in providers.ep_options(providers.get("tensorrt"),
                                                                image_size=None)


def test_cuda_options_and_precisions(tiny):  # noqa: F811
    opts = providers.ep_options(providers.get("cuda"), device_id=3, user={"arena_extend_strategy": "kSameAsRequested"})
    assert opts == {"device_id": "3", "arena_extend_strategy": "kSameAsRequested"}
    assert providers.ep_options(providers.get("cpu")) == {}
    spec = open_model(tiny, "cpu").spec
    # fp16 from an fp32 file needs TensorRT or an fp16 export; CUDA says so.
    with pytest.raises(ProviderError, match="fp16 export"):
        resolve_precision(providers.get("cuda"), spec, "fp16")
    assert resolve_precision(providers.get("tensorrt"), spec, "fp16") == "fp16"
    # IO binding is for CUDA only: decided by the row's device, not its name.
    assert providers.get("tensorrt").on_gpu and not providers.get("openvino").on_gpu


def test_cuda_absent_is_one_clear_error(tiny):  # noqa: F811
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(ProviderError, match=r"simx-embed\[gpu\]"):
        open_model(tiny, provider="cuda")


# ----------------------------------------------------------------------------- OpenVINO
def test_openvino_config_carries_precision_and_threads():
    """The plugin ignores its ``precision`` / ``num_of_threads`` options: both go in load_config."""
    opts = providers.ep_options(providers.get("openvino"), precision="bf16", threads=2)
    assert "precision" not in opts and "num_of_threads" not in opts
    cfg = json.loads(opts["load_config"])["CPU"]
    assert cfg["INFERENCE_PRECISION_HINT"] == "bf16" and cfg["INFERENCE_NUM_THREADS"] == "2"
    assert json.loads(providers.ep_options(providers.get("openvino"))["load_config"]
                      )["CPU"]["INFERENCE_PRECISION_HINT"] == "f32"


def test_bf16_refused_without_bf16_units(tiny, monkeypatch: pytest.MonkeyPatch):  # noqa: F811
    monkeypatch.setattr(providers, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    assert not providers.host_bf16()
    with pytest.raises(ProviderError, match="no bf16 units"):
        resolve_precision(providers.get("openvino-runtime"), open_model(tiny, "cpu").spec, "bf16")
    assert providers.host_bf16({"avx512_bf16"}) and providers.host_bf16({"amx_bf16"})


@needs_openvino
def test_openvino_plugin_runs_or_says_why(tiny):  # noqa: F811
    """The onnxruntime plugin runs where it offers a device; elsewhere (non-Intel CPUs,
    microsoft/onnxruntime#31981) the error names the CPU and the way out."""
    pytest.importorskip("onnxruntime_ep_openvino", reason="onnxruntime-ep-openvino not installed")
    try:
        check_available("openvino")
    except ProviderError as e:
        from simx.core.machine import cpu_model

        assert "Intel" not in cpu_model().split()[0]  # an Intel CPU must get a device
        assert cpu_model() in str(e) and "openvino-runtime" in str(e)
        return
    x = _pixels()
    ref = open_model(tiny, "cpu").run(x)
    ms = open_model(tiny, "openvino", threads=2)
    assert ms.providers[0] == "OpenVINOExecutionProvider" and ms.precision == "fp32"
    assert _cos(ms.run(x), ref) > 0.99999
    if providers.host_bf16():
        b = open_model(tiny, "openvino", threads=2, precision="bf16")
        assert b.precision == "bf16" and _cos(b.run(x), ref) > 0.999


@needs_openvino
def test_openvino_runtime_fp32_and_bf16(tiny):  # noqa: F811
    x = _pixels()
    ref = open_model(tiny, "cpu").run(x)
    f32 = open_model(tiny, "openvino-runtime", threads=2)
    assert (f32.provider, f32.precision, f32.device) == ("openvino-runtime", "fp32", "cpu")
    np.testing.assert_allclose(f32.run(x), ref, atol=1e-5)
    if not providers.host_bf16():
        with pytest.raises(ProviderError, match="no bf16 units"):
            open_model(tiny, "openvino-runtime", precision="bf16")
        return
    b = open_model(tiny, "openvino-runtime", threads=2, precision="bf16")
    assert b.precision == "bf16"  # read back from the compiled model, not echoed
    out = b.run(x)
    assert 0 < np.abs(out - ref).max() and _cos(out, ref) > 0.999  # bf16 really ran
    assert np.abs(b.run(x[:1]) - out[:1]).max() < 1e-2  # results are copies, not aliases


@needs_openvino
def test_dinov2_small_bf16_cosine(exported):
    """A real ViT at bf16: min cosine against the file's fp32 output on the CPU provider."""
    if not providers.host_bf16():
        pytest.skip("this CPU has no bf16 units; simx runs fp32 there")
    path = exported["dinov2-small"]
    ms = open_model(path, "cpu", threads=2)
    x = autoselect.calibration_pixels(ms.spec, n=4, seed=3)
    b = open_model(path, "openvino-runtime", threads=2, precision="bf16")
    assert b.precision == "bf16"
    assert _cos(b.run(x), ms.run(x)) >= autoselect.GATES["bf16"]


# ----------------------------------------------------------------------------- auto
def test_auto_picks_caches_and_reports(tiny, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
                                       user_cache: Path):
    from simx.run.encoder import Encoder

    enc = Encoder(tiny, provider="auto", precision="auto", threads=1)
    c = enc.choice
    assert c["source"] == "measured" and Path(c["cache_file"]).is_file()
    assert Path(c["cache_file"]).parent.parent == user_cache
    assert (enc.provider, enc.precision) == (c["provider"], c["precision"])
    passed = [r for r in c["measured"] if r["passed"]]
    best = max(passed, key=lambda r: r["img_s"])
    assert (best["provider"], best["precision"]) == (c["provider"], c["precision"])
    assert ("cpu", "fp32") in {(r["provider"], r["precision"]) for r in c["measured"]}
    assert c["line"].startswith(f"auto chose {c['provider']} {c['precision']}")
    assert "img/s" in c["line"] and "measured now" in c["line"]

    def no_calibration(*a, **k):
        raise AssertionError("the second call must read the cached decision")

    monkeypatch.setattr(autoselect, "calibrate", no_calibration)
    again = Encoder(tiny, provider="auto", precision="auto", threads=1)
    assert again.choice["source"] == "cache" and "cached" in again.choice["line"]
    assert (again.provider, again.precision) == (enc.provider, enc.precision)
    with pytest.raises(AssertionError, match="cached decision"):  # another request: measured
        Encoder(tiny, provider="auto", precision="auto", threads=2)


@needs_openvino
def test_auto_gate_rejects_an_inaccurate_path(tiny, monkeypatch: pytest.MonkeyPatch):  # noqa: F811
    if not providers.host_bf16():
        pytest.skip("no bf16 path on this CPU")
    monkeypatch.setitem(autoselect.GATES, "bf16", 1.5)  # no bf16 result can pass
    c = autoselect.choose(tiny, "auto", threads=1)
    bf16 = [r for r in c["measured"] if r["precision"] == "bf16"]
    assert bf16 and not any(r["passed"] for r in bf16)
    assert c["precision"] != "bf16"


def test_auto_fallback_warning_is_one_line():
    c = {"provider": "cpu", "precision": "fp32", "batch": 4, "cache_file": "/x.json",
         "skipped": ["cuda: not available", "openvino: no device"],
         "measured": [{"provider": "cpu", "precision": "fp32", "img_s": 10.0,
                       "min_cosine": 1.0, "passed": True}]}
    line, warning = autoselect.describe(c)
    assert "auto chose cpu fp32" in line and "\n" not in line
    assert warning is not None and "fell back to the CPU" in warning and "\n" not in warning
    assert "cuda" in warning and "openvino" in warning
    c2 = dict(c, provider="openvino-runtime", precision="bf16", skipped=[],
              measured=[dict(c["measured"][0], provider="openvino-runtime", precision="bf16")])
    assert autoselect.describe(c2)[1] is None


def test_cli_embed_precision_auto_prints_the_choice(tiny, photo_dir, tmp_path: Path):  # noqa: F811
    from click.testing import CliRunner

    from simx.cli.app import main

    r = CliRunner().invoke(main, ["embed", str(photo_dir), "--model", str(tiny), "--cache",
                                  str(tmp_path / "c"), "--precision", "auto", "--threads", "1"])
    assert r.exit_code == 0, r.output
    assert "simx: auto chose " in r.output
    meta = json.loads((tmp_path / "c" / "cache.json").read_text())
    chosen = next(ln for ln in r.output.splitlines() if "auto chose" in ln).split()[3:5]
    chosen[1] = chosen[1].rstrip(":")
    assert [meta["provider"], meta["precision"]] == chosen


# ----------------------------------------------------------------------------- the cache record
def test_cache_records_and_refuses_mixed_precision(tiny, photo_dir, tmp_path: Path):  # noqa: F811
    from simx.cache import CacheMismatchError, CacheWriter
    from simx.run.encoder import Encoder
    from simx.embed.pipeline import embed_into_cache

    cache = tmp_path / "c"
    enc = Encoder(tiny, provider="cpu")
    embed_into_cache([photo_dir], enc, cache, progress=False)
    meta = json.loads((cache / "cache.json").read_text())
    assert (meta["provider"], meta["precision"]) == ("cpu", "fp32")
    with pytest.raises(CacheMismatchError) as e:
        CacheWriter(cache, enc.spec, run={"provider": "openvino", "precision": "bf16"})
    msg = str(e.value)
    assert "fp32" in msg and "bf16" in msg and "openvino" in msg and "--force" in msg
    # Same precision on another provider is not a mix.
    with CacheWriter(cache, enc.spec, run={"provider": "openvino-runtime", "precision": "fp32"}):
        pass
    # A cache written before simx recorded them is fp32 on the CPU provider.
    meta.pop("provider")
    (cache / "cache.json").write_text(json.dumps(meta))
    with pytest.raises(CacheMismatchError, match="provider cpu"):
        CacheWriter(cache, enc.spec, run={"provider": "tensorrt", "precision": "fp16"})
    with CacheWriter(cache, enc.spec, run={"provider": "tensorrt", "precision": "fp16"},
                     force=True) as w:
        assert w.count == 0  # --force starts afresh


@needs_openvino
def test_cli_refuses_bf16_rows_into_an_fp32_cache(tiny, photo_dir, tmp_path: Path):  # noqa: F811
    from click.testing import CliRunner

    from simx.cli.app import main

    if not providers.host_bf16():
        pytest.skip("no bf16 path on this CPU")
    cache = str(tmp_path / "c")
    base = ["embed", str(photo_dir), "--model", str(tiny), "--cache", cache]
    assert CliRunner().invoke(main, base + ["--provider", "cpu"]).exit_code == 0
    r = CliRunner().invoke(main, base + ["--provider", "openvino-runtime", "--precision", "bf16"])
    assert r.exit_code == 2 and "fp32" in r.output and "bf16" in r.output
    r = CliRunner().invoke(main, base + ["--provider", "openvino-runtime", "--precision", "bf16",
                                         "--force"])
    assert r.exit_code == 0, r.output
    meta = json.loads(Path(cache, "cache.json").read_text())
    assert (meta["provider"], meta["precision"]) == ("openvino-runtime", "bf16")


# ----------------------------------------------------------------------------- bench figures
def test_reference_gemm_in_the_precision_used():
    pytest.importorskip("onnx")
    from simx.bench import gemm_gflops

    cpu = gemm_gflops("cpu", "fp32", threads=1, n=128, repeats=1)
    assert cpu["gflops"] > 0 and cpu["precision"] == "fp32" and "MatMul" in cpu["kind"]
    gone = gemm_gflops("metal", "fp32", n=64)
    assert gone["gflops"] is None and "unknown provider" in gone["error"]
    if _openvino_importable() and providers.host_bf16():
        bf = gemm_gflops("openvino-runtime", "bf16", threads=1, n=128, repeats=1)
        assert bf["gflops"] > 0 and bf["precision"] == "bf16"


def test_bench_reports_same_precision_efficiency(tiny):  # noqa: F811
    pytest.importorskip("onnx")
    from simx import bench

    cfg = bench.BenchConfig(model=str(tiny), provider="cpu", batch_sizes=(2,), seconds=0.2,
                            rounds=1, warmup=1, sgemm_n=64)
    r = bench.run_bench(cfg)
    ref = r["reference_same_precision"]
    assert ref["gflops"] > 0 and ref["provider"] == "cpu" and ref["precision"] == "fp32"
    mo = r["results"][0]["model_only"]
    assert mo["efficiency_same_precision"] == pytest.approx(mo["gflops_s"] / ref["gflops"])
    assert (r["config"]["provider"], r["config"]["precision"]) == ("cpu", "fp32")
    assert "eff. same prec." in bench.render(r)


def test_decode_pool_sized_from_measured_speeds(tiny, photo_dir):  # noqa: F811
    from simx.run.encoder import Encoder, sized_workers
    from simx.core.machine import usable_cores

    assert sized_workers(10.0, 100.0, False) == 1  # decoding is a tenth of the model
    assert sized_workers(30.0, 10.0, False) == min(4, usable_cores())  # ceil(1.25 * 3)
    assert sized_workers(1e6, 1.0, True) == min(16, usable_cores())
    enc = Encoder(tiny, provider="cpu", threads=1)
    assert enc.auto_workers
    paths = sorted(p for p in photo_dir.iterdir() if p.is_file())
    enc.embed(paths, batch_size=2)
    rep = enc.pool_report()
    assert rep["prepare_ms_per_image"] > 0 and rep["model_ms_per_image"] > 0
    assert rep["workers"] >= rep["sized_workers"] >= 1
    fixed = Encoder(tiny, provider="cpu", threads=1, workers=1)
    fixed.embed(paths, batch_size=2)
    assert fixed.workers == 1 and not fixed.pool_report()["auto"]


def test_int8_file_runs_at_its_own_precision(tmp_path: Path):
    q = build_tiny_model(tmp_path / "q.onnx", dynamic_int8=True)
    assert open_model(q, "cpu").precision == "int8"
    with pytest.raises(ProviderError, match="int8 file"):
        open_model(q, "cpu", precision="bf16")
    paths, _ = autoselect.candidates("auto", "int8")
    assert ("cpu", "int8") in paths and all(p == "int8" for _, p in paths)
    if _openvino_importable():
        ov = open_model(q, "openvino-runtime", threads=1)
        assert ov.precision == "int8"
        x = _pixels(1)
        assert _cos(ov.run(x), open_model(q, "cpu").run(x)) >= autoselect.GATES["int8"]


def test_auto_considers_the_int8_sibling_and_opens_it(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch):
    """An fp32 file's `<stem>-int8.onnx` beside it is a candidate, gated against the fp32
    output; when it is the fastest accurate path, auto opens that file and says so."""
    from simx.run.encoder import Encoder

    fp32 = build_tiny_model(tmp_path / "tiny-test.onnx")
    int8 = build_tiny_model(tmp_path / "tiny-test-int8.onnx", dynamic_int8=True)
    build_tiny_model(tmp_path / "tiny-test-fp16.onnx", seed=5)  # another model, not fp16
    timed = autoselect._time_path

    def int8_fastest(ms, x, seconds):
        img_s, out = timed(ms, x, seconds)
        return (1e6 if ms.path == int8 else img_s), out

    monkeypatch.setattr(autoselect, "_time_path", int8_fastest)
    enc = Encoder(fp32, provider="auto", precision="auto", threads=1)
    c = enc.choice
    rows = {(r["provider"], r["precision"], r.get("file")) for r in c["measured"]}
    assert ("cpu", "fp32", None) in rows and ("cpu", "int8", "tiny-test-int8.onnx") in rows
    assert any("tiny-test-fp16.onnx: not the fp16 export" in s for s in c["skipped"])
    assert c["file"] == "tiny-test-int8.onnx" and c["precision"] == "int8"
    assert enc.path == int8 and enc.precision == "int8"
    assert "(tiny-test-int8.onnx)" in c["line"]
    x = _pixels()
    gate = next(r for r in c["measured"] if r.get("file"))
    assert gate["gate"] == autoselect.GATES["int8"] and gate["passed"]
    assert _cos(enc._session.run(x), open_model(fp32, "cpu").run(x)) >= autoselect.GATES["int8"]
    # An int8 file asked for auto itself runs at its own precision.
    assert Encoder(int8, provider="cpu", precision="auto", threads=1).precision == "int8"
    # A sibling removed (or re-exported) since the decision changes the key: measured again.
    int8.unlink()
    again = autoselect.choose(fp32, "auto", threads=1)
    assert again["source"] == "measured" and "file" not in again
