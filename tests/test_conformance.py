"""The conformance sweep's machinery (fast), and the sweep itself (slow)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("open_clip")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import conformance  # noqa: E402

from simx.model import catalogue
from simx.export import to_onnx  # noqa: E402


def test_graph_sharing_groups_tags_not_architectures() -> None:
    """Two tags of one architecture share a graph; quick_gelu or another size do not."""
    cat = catalogue.load_catalogue()
    a, b = cat["openclip-vit-b-32-laion2b_s34b_b79k"], cat["openclip-vit-b-32-laion2b_e16"]
    qg = cat["openclip-vit-b-32-openai"]
    assert conformance.group_key(a) == conformance.group_key(b)
    assert conformance.group_key(a) != conformance.group_key(qg)  # openai needs QuickGELU
    assert conformance.group_key(cat["dinov2-small"]) != conformance.group_key(cat["dinov2-small-reg"])
    assert conformance.preprocess_check(b) == "equal"


def test_classify_names_causes() -> None:
    assert conformance.classify(conformance.RowTimeout("x")) == "timeout"
    assert conformance.classify(RuntimeError("model has collapsed")) == "collapse (no random recipe)"
    assert conformance.classify(RuntimeError("[ONNXRuntimeError] : 9 : NOT_IMPLEMENTED")) \
        == "op onnxruntime lacks"
    assert conformance.classify(ValueError("something new")) == "other"
    assert conformance.classify(OSError("We couldn't connect to 'https://huggingface.co' to load")) \
        == "Hugging Face text config (hub unreachable)"


def test_reduced_depth_row_and_forced_failure(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """One real export at 1 block with the full tower's module classes, then a forced
    exporter failure that becomes a classified row, and the table names both."""
    entry = catalogue.load_catalogue()["dinov2-small"]
    row = conformance.export_row(entry, depth=1, timeout=120)
    assert row["exported"], row
    assert row["blocks"] == 1 and row["full_blocks"] == 12 and row["same_classes"] is True
    assert 0.0 < row["min_cosine"] <= 1.0 and row["median_pairwise_cosine"] < 0.98

    def broken(*_a: object, **_k: object) -> None:
        raise to_onnx.ExportError("Unsupported ONNX op aten::frobnicate in dinov2-small")

    monkeypatch.setattr(to_onnx, "export_onnx", broken)
    bad = conformance.export_row(entry, depth=1, timeout=120)
    assert not bad["exported"] and bad["error"] == "ExportError"
    assert bad["cause"] == "unsupported ONNX op" and "frobnicate" in bad["reason"]

    doc = {"machine": conformance.machine(), "settings": {"depth": 1, "reduce_above_m": 0, "timeout_s": 120},
           "rows": {"a": {**row, "id": "a"}, "b": {**bad, "id": "b"}}}
    md = conformance.table(doc)
    assert "Pass rate: 1/2" in md and "unsupported ONNX op: 1" in md


@pytest.mark.slow
def test_sweep_pass_rate(tmp_path: Path) -> None:
    """The whole catalogue (every tower at 2 blocks, as the committed table runs it):
    at least 95% of the rows export with parity. About 30 minutes on 2 cores."""
    out = tmp_path / "conformance.json"
    conformance.main(["--out", str(out), "--reduce-above", "0", "--depth", "2", "--timeout", "300"])
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == len(catalogue.load_catalogue())
    assert sum(r["exported"] for r in rows.values()) >= 0.95 * len(rows)
    assert all(r.get("cause") for r in rows.values() if not r["exported"])
