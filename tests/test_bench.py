"""simx bench: the JSON schema, the regression gate on crafted baselines, the tables.

No test asserts a time: runs use a tiny model for a fraction of a second, and the
gate is exercised with baselines crafted so that the verdict does not depend on speed.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from simx import bench
from simx.cli.app import main

sys.path.insert(0, str(Path(__file__).parent))
from tiny_model import build_tiny_model  # noqa: E402

FAST = dict(seconds=0.05, warmup=1, sgemm_n=128)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("bench") / "tiny.onnx")


@pytest.fixture(scope="module")
def synthetic_result(tiny) -> dict:
    cfg = bench.BenchConfig(model=str(tiny), provider="cpu", batch_sizes=(1, 4), **FAST)
    return bench.run_bench(cfg)


def _with(result: dict, *, factor: float = 1.0, raw: float = 1.0, e2e: float = 1.0) -> dict:
    """A copy with normalized figures scaled by ``factor`` and raw img/s by ``raw``."""
    r = copy.deepcopy(result)
    for row in r["results"]:
        mo = row["model_only"]
        mo["img_s"] *= raw
        for k in ("efficiency", "img_s_per_sgemm_gflops"):
            if mo[k] is not None:
                mo[k] *= factor
        if row["end_to_end"]:
            row["end_to_end"]["ratio_to_model_only"] *= e2e
    return r


# ----------------------------------------------------------------------------- schema
def test_json_schema_of_a_real_run(synthetic_result, tmp_path):
    r = synthetic_result
    bench.validate_result(r)
    assert r["schema"] == bench.SCHEMA
    assert r["config"]["mode"] == "synthetic"
    assert r["config"]["providers"][0] == "CPUExecutionProvider"
    assert [row["batch_size"] for row in r["results"]] == [1, 4]
    for key in ("cpu_model", "logical_cores", "onnxruntime", "numpy", "simx", "timestamp"):
        assert r["machine"][key]
    assert r["model"]["id"] == "tiny-test" and len(r["model"]["spec_hash"]) == 16
    cold = r["cold_start"]
    assert cold["import_simx_s"] > 0 and cold["session_create_s"] > 0
    assert cold["torch_loaded"] is False  # the runtime never imports torch
    assert r["reference"]["gflops"] > 0
    for row in r["results"]:
        mo = row["model_only"]
        lat = mo["latency_ms"]
        assert mo["img_s"] > 0 and mo["images"] == mo["batches"] * row["batch_size"]
        assert lat["p50"] <= lat["p90"] <= lat["p99"]
        assert len(mo["rounds"]) == 5 and all(x["sgemm_gflops"] > 0 for x in mo["rounds"])
        assert mo["efficiency"] == pytest.approx(
            mo["img_s_per_sgemm_gflops"] * r["model"]["gflops_per_image"])
        assert min(x["img_s"] / x["sgemm_gflops"] for x in mo["rounds"]) <= (
            mo["img_s_per_sgemm_gflops"]) <= max(x["img_s"] / x["sgemm_gflops"] for x in mo["rounds"])
    # survives a JSON round trip and reads back as a baseline
    p = tmp_path / "run.json"
    bench.write_result(r, p)
    assert bench.load_result(p) == json.loads(json.dumps(r))


def test_gflops_counted_from_the_graph(tiny):
    # Conv 3->32, k4 s4 on 32x32: out [1,32,8,8], 3*4*4 MACs each; MatMul [1,32]x[32,16].
    expected = (2 * 32 * 8 * 8 * 3 * 4 * 4 + 2 * 32 * 16) / 1e9
    assert bench.count_gflops(tiny) == pytest.approx(expected)


def test_schema_rejects_broken_baselines(synthetic_result, tmp_path):
    bad = copy.deepcopy(synthetic_result)
    del bad["reference"]
    with pytest.raises(bench.BaselineError, match="reference"):
        bench.validate_result(bad)
    bad = copy.deepcopy(synthetic_result)
    del bad["results"][0]["model_only"]["efficiency"]
    with pytest.raises(bench.BaselineError, match="efficiency"):
        bench.validate_result(bad)
    p = tmp_path / "x.json"
    p.write_text("{not json")
    with pytest.raises(bench.BaselineError, match="not valid JSON"):
        bench.load_result(p)
    with pytest.raises(bench.BaselineError, match="schema"):
        bench.validate_result({"schema": "other/9"})


# ----------------------------------------------------------------------------- gate
def test_gate_passes_against_itself(synthetic_result):
    rep = bench.compare(synthetic_result, synthetic_result, 0.10)
    assert rep.passed
    gated = [r for r in rep.rows if r.gated]
    assert len(gated) == 2 and all(r.change == pytest.approx(0) for r in gated)


def test_gate_fails_on_normalized_drop(synthetic_result):
    now = _with(synthetic_result, factor=0.5)  # e.g. a 1-thread run against a 2-thread baseline
    rep = bench.compare(now, synthetic_result, 0.10)
    assert not rep.passed
    bad = [r.figure for r in rep.rows if rep.verdict(r) == "REGRESSION"]
    assert len(bad) == 2 and all("efficiency" in f for f in bad)
    text = bench.render_gate(rep)
    assert "REGRESSION" in text and "FAIL: 2 figure(s)" in text and "-50.0%" in text


def test_gate_tolerance_edges(synthetic_result):
    assert bench.compare(_with(synthetic_result, factor=0.95), synthetic_result, 0.10).passed
    assert not bench.compare(_with(synthetic_result, factor=0.85), synthetic_result, 0.10).passed
    assert bench.compare(_with(synthetic_result, factor=0.85), synthetic_result, 0.20).passed
    assert bench.compare(_with(synthetic_result, factor=1.5), synthetic_result, 0.0).passed


def test_gate_ignores_raw_throughput(synthetic_result):
    # A machine 40% slower (or busier) lowers raw img/s, but not the normalized figure.
    rep = bench.compare(_with(synthetic_result, raw=0.6), synthetic_result, 0.10)
    assert rep.passed
    raw = [r for r in rep.rows if "raw" in r.figure and "b=" in r.figure]
    assert raw and all(not r.gated and rep.verdict(r) == "info (not gated)" for r in raw)
    assert all(r.change == pytest.approx(-0.4) for r in raw)


def test_gate_refuses_mismatched_baselines(synthetic_result):
    other = copy.deepcopy(synthetic_result)
    other["model"]["id"] = "dinov2-small"
    with pytest.raises(bench.BaselineError, match="dinov2-small"):
        bench.compare(synthetic_result, other, 0.10)
    other = copy.deepcopy(synthetic_result)
    other["model"]["precision"] = "int8"
    with pytest.raises(bench.BaselineError, match="precision"):
        bench.compare(synthetic_result, other, 0.10)
    more = copy.deepcopy(synthetic_result)
    more["results"].append(dict(copy.deepcopy(more["results"][0]), batch_size=32))
    with pytest.raises(bench.BaselineError, match=r"lacks \[32\].*--batch-sizes 1,4,32"):
        bench.compare(synthetic_result, more, 0.10)
    # The run may measure more batch sizes than the baseline: those are noted, not gated.
    rep = bench.compare(more, synthetic_result, 0.10)
    assert rep.passed and any("[32]" in n for n in rep.notes)
    with pytest.raises(bench.BaselineError, match="max-regression"):
        bench.compare(synthetic_result, synthetic_result, 1.5)


def test_gate_end_to_end_ratio(synthetic_result):
    base = copy.deepcopy(synthetic_result)
    for row in base["results"]:
        row["end_to_end"] = {"img_s": 10.0, "ratio_to_model_only": 0.9, "images": 16,
                             "ms_per_image": 100.0}
    with pytest.raises(bench.BaselineError, match="--images"):
        bench.compare(synthetic_result, base, 0.10)
    assert bench.compare(base, base, 0.10).passed
    rep = bench.compare(_with(base, e2e=0.7), base, 0.10)
    assert [r.figure for r in rep.rows if rep.verdict(r) == "REGRESSION"] == [
        "b=1 end-to-end / model-only", "b=4 end-to-end / model-only"]


# ----------------------------------------------------------------------------- tables + CLI
def test_table_renders(synthetic_result):
    text = bench.render(synthetic_result)
    lines = text.splitlines()
    assert lines[0].startswith("simx bench  tiny-test (fp32, 32px")
    head = next(i for i, ln in enumerate(lines) if ln.startswith("batch"))
    assert "efficiency" in lines[head] and "p99 ms" in lines[head]
    rows = [ln.split() for ln in lines[head + 2:head + 4]]
    assert [r[0] for r in rows] == ["1", "4"]
    assert all(r[-1].endswith("%") for r in rows)
    assert "cold start" in text and "sgemm" in text


def _write(d: dict, p: Path) -> Path:
    p.write_text(json.dumps(d))
    return p


def test_cli_gate_exit_codes(tiny, synthetic_result, tmp_path):
    runner = CliRunner()
    args = ["bench", "--model", str(tiny), "--provider", "cpu", "--batch-sizes", "1,4",
            "--seconds", "0.05", "--warmup", "1", "--sgemm-size", "128"]
    # A baseline no real run can reach (efficiency x1e6): exit 1 with the table.
    high = _write(_with(synthetic_result, factor=1e6), tmp_path / "high.json")
    res = runner.invoke(main, args + ["--baseline", str(high), "--json", str(tmp_path / "o.json")])
    assert res.exit_code == 1, res.output
    assert "REGRESSION" in res.output and "FAIL" in res.output
    bench.validate_result(json.loads((tmp_path / "o.json").read_text()))
    # A baseline any run beats (efficiency x1e-6): exit 0.
    low = _write(_with(synthetic_result, factor=1e-6), tmp_path / "low.json")
    res = runner.invoke(main, args + ["--baseline", str(low)])
    assert res.exit_code == 0, res.output
    assert "PASS" in res.output
    # Mismatched batch sizes: refused before the run, one line, exit 2.
    res = runner.invoke(main, args[:5] + ["--batch-sizes", "8", "--baseline", str(low)])
    assert res.exit_code == 2
    assert "lacks [1, 4]" in res.output
    res = runner.invoke(main, args + ["--images", str(tmp_path), "--synthetic"])
    assert res.exit_code == 2


def test_bench_with_images(tiny, photo_dir):
    cfg = bench.BenchConfig(model=str(tiny), provider="cpu", batch_sizes=(2,), images=photo_dir,
                            **FAST)
    r = bench.run_bench(cfg)
    bench.validate_result(r)
    assert r["config"]["mode"] == "images"
    st = r["stages"]
    assert st["images"] == len(list(photo_dir.iterdir()))
    assert st["decode_ms_per_image"] > 0 and st["preprocess_ms_per_image"] > 0
    e2e = r["results"][0]["end_to_end"]
    assert e2e["img_s"] > 0 and e2e["images"] >= 5 * 4  # at least two batches per round
    rounds = r["results"][0]["model_only"]["rounds"]
    per = [x["e2e_images"] / x["e2e_s"] / x["img_s"] for x in rounds]
    assert len(per) == 5 and min(per) <= e2e["ratio_to_model_only"] <= max(per)
    assert e2e["images"] == sum(x["e2e_images"] for x in rounds)
    assert np.isfinite(e2e["sequential_ms_per_image"])
    assert "end-to-end" in bench.render(r) and "decode" in bench.render(r)


def test_gate_with_different_gflops_sources(synthetic_result):
    # One run counted the graph, the other read the metadata: efficiencies are not
    # comparable, so the gate uses the GFLOP-free rate and says so.
    base = copy.deepcopy(synthetic_result)
    base["model"]["gflops_per_image"] *= 0.7
    for row in base["results"]:
        row["model_only"]["efficiency"] *= 0.7
    rep = bench.compare(synthetic_result, base, 0.10)
    assert rep.passed
    assert any("GFLOP/image differs" in n for n in rep.notes)
    assert all("per sgemm" in r.figure for r in rep.rows if r.gated)
    assert not bench.compare(_with(synthetic_result, factor=0.5), base, 0.10).passed


def test_gflops_through_fused_contrib_ops(tmp_path):
    # The shape of a graph after onnxruntime fusion: onnx's own shape inference stops at
    # com.microsoft ops, the counter must carry shapes through them.
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    s, d, h = 5, 8, 32
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((d, h)).astype(np.float32), "w1")
    bias = numpy_helper.from_array(np.zeros(h, np.float32), "bias")
    w2 = numpy_helper.from_array(rng.standard_normal((h, d)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["a"]),
        helper.make_node("BiasGelu", ["a", "bias"], ["g"], domain="com.microsoft"),
        helper.make_node("MatMul", ["g", "w2"], ["m"]),
        helper.make_node("MultiHeadAttention", ["m", "m", "m"], ["y"], domain="com.microsoft",
                         num_heads=2),
    ]
    graph = helper.make_graph(
        nodes, "fused",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", s, d])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", s, d])],
        initializer=[w1, bias, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                    helper.make_opsetid("com.microsoft", 1)])
    path = tmp_path / "fused.onnx"
    onnx.save(model, str(path))
    expected = (2 * s * d * h + 2 * s * h * d + 4 * s * s * d) / 1e9
    assert bench.count_gflops(path) == pytest.approx(expected)


def test_end_to_end_rounds_are_bounded_by_time_not_by_the_model_rate():
    """A model far faster than decoding (a tiny model, a GPU) must not queue minutes of
    decoding per round: chunks are capped at 16 batches and stop once the budget is spent."""
    import time

    from simx.bench.timing import stream_for

    calls: list[tuple[int, int]] = []

    def slow_stream(r: int, k: int) -> None:
        calls.append((r, k))
        time.sleep(0.02)

    images, secs = stream_for(slow_stream, 0, batch=4, img_s=1e6, budget=0.05)
    assert all(k == 64 for _, k in calls) and images == 64 * len(calls)
    assert 2 <= len(calls) <= 6 and secs >= 0.05
    assert len({r for r, _ in calls}) == len(calls)  # each chunk starts elsewhere in the list
    calls.clear()
    images, _ = stream_for(slow_stream, 1, batch=8, img_s=1.0, budget=0.0)
    assert calls == [(1_000_003, 16)] and images == 16  # at least one chunk of 2 batches
