"""The CI regression gate: a run against a stored baseline, on normalized figures.

CI machines are shared and noisy, so the gate compares efficiency (the model's GFLOP/s ÷
the same run's sgemm rate) and the end-to-end ÷ model-only ratio, never raw img/s (that
is shown next to them, not gated). ``precheck`` refuses a mismatched baseline before the
run; ``compare`` refuses one after it and builds the report; ``render_gate`` prints it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from simx.bench.render import format_table
from simx.bench.schema import BaselineError, validate_result

_NEEDS_IMAGES = ("baseline has end-to-end figures (recorded with --images) but this run has "
                 "none; run with --images too")


@dataclass
class GateRow:
    figure: str
    baseline: float | None
    now: float | None
    gated: bool

    @property
    def change(self) -> float | None:
        if self.baseline in (None, 0) or self.now is None:
            return None
        return self.now / self.baseline - 1.0


@dataclass
class GateReport:
    rows: list[GateRow]
    max_regression: float
    notes: list[str]

    def verdict(self, r: GateRow) -> str:
        if not r.gated:
            return "info (not gated)"
        ch = r.change
        if ch is None:
            return "n/a"
        if ch < -self.max_regression:
            return "REGRESSION"
        return "ok"

    @property
    def passed(self) -> bool:
        return all(self.verdict(r) != "REGRESSION" for r in self.rows)


def _row_by_batch(d: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {int(r["batch_size"]): r for r in d["results"]}


def _check_model(baseline: dict[str, Any], now: dict[str, Any], who: str) -> None:
    """The same model id, precision and input size as the baseline (``who``: "this run",
    "the model": whose figures ``now`` are)."""
    bm = baseline["model"]
    for key in ("id", "precision", "image_size"):
        if bm[key] != now[key]:
            raise BaselineError(f"baseline is for {key} {bm[key]!r} but {who} has {now[key]!r}; "
                                "record a baseline for this model")


def _check_batch_sizes(baseline: dict[str, Any], batch_sizes: Sequence[int]) -> None:
    """Every batch size of the baseline is measured (more are fine: noted, not gated)."""
    base = sorted(_row_by_batch(baseline))
    missing = sorted(set(base) - set(batch_sizes))
    if missing:
        raise BaselineError(
            f"baseline has batch sizes {base} but this run lacks {missing}; "
            f"run with --batch-sizes {','.join(map(str, base))}"
        )


def precheck(baseline: dict[str, Any], spec: Any, batch_sizes: Sequence[int],
             with_images: bool) -> None:
    """Refuse a mismatched baseline before spending minutes on the run."""
    _check_model(baseline, {"id": spec.id, "precision": spec.precision,
                            "image_size": spec.image_size}, "the model")
    _check_batch_sizes(baseline, batch_sizes)
    if any(r.get("end_to_end") for r in baseline["results"]) and not with_images:
        raise BaselineError(_NEEDS_IMAGES)


def _check_comparable(result: dict[str, Any], baseline: dict[str, Any]) -> None:
    """Raise BaselineError unless the run can be gated against the baseline at all."""
    validate_result(result, "this run")
    validate_result(baseline, "baseline")
    _check_model(baseline, result["model"], "this run")
    bp, rp = baseline["config"]["providers"][:1], result["config"]["providers"][:1]
    if bp != rp:
        raise BaselineError(f"baseline ran on {bp[0] if bp else '?'} but this run on "
                            f"{rp[0] if rp else '?'}; compare like with like")
    _check_batch_sizes(baseline, list(_row_by_batch(result)))


def _same_flops(bm: dict[str, Any], rm: dict[str, Any]) -> bool:
    """Efficiency is only comparable when both runs divide by the same GFLOP/image (one
    may have counted the graph, the other read the metadata)."""
    return bm["gflops_per_image"] is not None and rm["gflops_per_image"] is not None and (
        abs(bm["gflops_per_image"] / rm["gflops_per_image"] - 1) < 1e-6)


def _notes(result: dict[str, Any], baseline: dict[str, Any]) -> list[str]:
    """What differs between the two runs without making them incomparable."""
    bm, rm = baseline["model"], result["model"]
    notes: list[str] = []
    if bm["spec_hash"] != rm["spec_hash"]:
        notes.append("spec hash differs (other weights or preprocessing): speed is comparable, "
                     "embeddings are not")
    if baseline["config"]["threads"] != result["config"]["threads"]:
        notes.append(f"threads: baseline {baseline['config']['threads'] or 'default'}, "
                     f"now {result['config']['threads'] or 'default'}")
    bmach, rmach = baseline["machine"], result["machine"]
    if (bmach["cpu_model"], bmach["logical_cores"]) != (rmach["cpu_model"], rmach["logical_cores"]):
        notes.append(f"machine: baseline {bmach['cpu_model']} x{bmach['logical_cores']}, now "
                     f"{rmach['cpu_model']} x{rmach['logical_cores']} (normalized figures travel "
                     "between machines only roughly; record a baseline per machine type)")
    extra = sorted(set(_row_by_batch(result)) - set(_row_by_batch(baseline)))
    if extra:
        notes.append(f"batch sizes {extra} are not in the baseline and are not gated")
    if not _same_flops(bm, rm):
        notes.append(f"GFLOP/image differs (baseline {bm['gflops_per_image']}, now "
                     f"{rm['gflops_per_image']}): gating img/s per sgemm GFLOP/s instead")
    return notes


def _batch_rows(b: int, base: dict[str, Any], now: dict[str, Any], same_flops: bool) -> list[GateRow]:
    """The gated and the raw figures of one batch size."""
    bo, ro = base["model_only"], now["model_only"]
    rows: list[GateRow] = []
    if same_flops and bo["efficiency"] is not None and ro["efficiency"] is not None:
        rows.append(GateRow(f"b={b} efficiency (model GFLOP/s / sgemm)",
                            bo["efficiency"], ro["efficiency"], True))
    elif bo["img_s_per_sgemm_gflops"] is not None and ro["img_s_per_sgemm_gflops"] is not None:
        rows.append(GateRow(f"b={b} img/s per sgemm GFLOP/s", bo["img_s_per_sgemm_gflops"],
                            ro["img_s_per_sgemm_gflops"], True))
    else:
        raise BaselineError(f"batch {b}: no normalized figure to compare (a GPU run?); "
                            "the gate needs a CPU run with its sgemm reference")
    be, re_ = base.get("end_to_end"), now.get("end_to_end")
    if be:
        if not re_:
            raise BaselineError(_NEEDS_IMAGES)
        rows.append(GateRow(f"b={b} end-to-end / model-only", be["ratio_to_model_only"],
                            re_["ratio_to_model_only"], True))
    rows.append(GateRow(f"b={b} img/s (raw)", bo["img_s"], ro["img_s"], False))
    if be and re_:
        rows.append(GateRow(f"b={b} end-to-end img/s (raw)", be["img_s"], re_["img_s"], False))
    return rows


def compare(result: dict[str, Any], baseline: dict[str, Any], max_regression: float) -> GateReport:
    """Compare a run with a baseline on the normalized figures.

    Raises BaselineError when the two are not comparable: another model or precision,
    a baseline batch size the run lacks, end-to-end figures the run did not measure,
    or another provider. Thread count is *not* checked: using fewer threads than the
    baseline is exactly the kind of regression the gate exists to catch.
    """
    if not 0 <= max_regression < 1:
        raise BaselineError(f"--max-regression must be in [0, 1), got {max_regression}")
    _check_comparable(result, baseline)
    notes = _notes(result, baseline)
    same_flops = _same_flops(baseline["model"], result["model"])
    brows, rrows = _row_by_batch(baseline), _row_by_batch(result)
    rows = [row for b in sorted(brows) for row in _batch_rows(b, brows[b], rrows[b], same_flops)]
    rows.append(GateRow("sgemm GFLOP/s (reference, raw)", baseline["reference"]["gflops"],
                        result["reference"]["gflops"], False))
    return GateReport(rows=rows, max_regression=max_regression, notes=notes)


def render_gate(report: GateReport) -> str:
    """The gate's table: figure, baseline, now, change, verdict; then the outcome."""

    def num(x: float | None) -> str:
        if x is None:
            return "n/a"
        return f"{x:.3f}" if abs(x) < 10 else f"{x:.1f}"

    rows = []
    for r in report.rows:
        ch = r.change
        rows.append([r.figure, num(r.baseline), num(r.now),
                     "n/a" if ch is None else f"{100 * ch:+.1f}%", report.verdict(r)])
    lines = [
        f"regression gate (tolerance {100 * report.max_regression:.0f}% below baseline on "
        "normalized figures; raw img/s is shown, not gated)",
        format_table(["figure", "baseline", "now", "change", "verdict"], rows),
    ]
    lines += [f"note: {n}" for n in report.notes]
    bad = [r.figure for r in report.rows if report.verdict(r) == "REGRESSION"]
    lines.append(f"FAIL: {len(bad)} figure(s) regressed: {'; '.join(bad)}" if bad else "PASS")
    return "\n".join(lines)
