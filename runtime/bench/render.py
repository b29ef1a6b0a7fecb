"""``simx bench``'s human-readable report: plain aligned text tables."""

from __future__ import annotations

from typing import Any, Sequence


def format_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain, aligned text table (first column left, the rest right-aligned)."""
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]

    def line(cells: Sequence[str]) -> str:
        out = [str(cells[0]).ljust(widths[0])]
        out += [str(c).rjust(w) for c, w in zip(cells[1:], widths[1:])]
        return "  ".join(out).rstrip()

    return "\n".join([line(head), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def _f(x: float | None, fmt: str = "{:.1f}") -> str:
    return "n/a" if x is None else fmt.format(x)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def _header(result: dict[str, Any]) -> list[str]:
    """The lines above the table: model, machine, session, reference, cold start."""
    m, c, mach, ref = result["model"], result["config"], result["machine"], result["reference"]
    cold = result["cold_start"]
    lines = [
        f"simx bench  {m['id']} ({m['precision']}, {m['image_size']}px, spec {m['spec_hash']})",
        f"machine     {mach['cpu_model']}, {mach['logical_cores']} cores, "
        f"onnxruntime {mach['onnxruntime']}, numpy {mach['numpy']}, load {mach.get('load_average_1_5_15')}",
        f"session     {', '.join(c['providers'])}, threads {c['threads'] or 'default'}, "
        f"input {c['mode']}",
        f"model       {_f(m['gflops_per_image'], '{:.2f}')} GFLOP/image "
        f"({m['gflops_source'] or 'unknown'}); "
        f"reference sgemm {ref['gflops']:.1f} GFLOP/s (numpy, all cores, median of "
        f"{ref.get('samples', '?')} samples in this run)",
        f"cold start  import simx {_f(cold.get('import_simx_s'), '{:.3f}')} s, "
        f"+runtime {_f(cold.get('import_runtime_s'), '{:.3f}')} s, "
        f"session {_f(cold.get('session_create_s'), '{:.3f}')} s, "
        f"first run {_f(cold.get('first_inference_s'), '{:.3f}')} s",
    ]
    same = result.get("reference_same_precision") or {}
    if same:
        lines.append(f"same prec.  {same.get('kind')}: {_f(same.get('gflops'))} GFLOP/s"
                     + (f" ({same['error']})" if same.get("error") else "")
                     + f"; session ran {c.get('provider', '?')} at {c.get('precision', '?')}")
    return lines


def _figures_table(result: dict[str, Any]) -> str:
    """One row per batch size: throughput, latency, GFLOP/s, efficiency, end to end."""
    head = ["batch", "img/s", "p50 ms", "p90 ms", "p99 ms", "GFLOP/s", "efficiency",
            "eff. same prec."]
    e2e = any(r["end_to_end"] for r in result["results"])
    if e2e:
        head += ["e2e img/s", "e2e/model"]
    rows = []
    for r in result["results"]:
        mo, lat = r["model_only"], r["model_only"]["latency_ms"]
        row = [str(r["batch_size"]), _f(mo["img_s"]), _f(lat["p50"]), _f(lat["p90"]),
               _f(lat["p99"]), _f(mo["gflops_s"]), _pct(mo["efficiency"]),
               _pct(mo.get("efficiency_same_precision"))]
        if e2e:
            ee = r["end_to_end"] or {}
            row += [_f(ee.get("img_s")), _pct(ee.get("ratio_to_model_only"))]
        rows.append(row)
    return format_table(head, rows)


def _stages_table(result: dict[str, Any], st: dict[str, Any]) -> list[str]:
    """Decode, preprocess, inference and end to end, mean ms per image."""
    srows = []
    for r in result["results"]:
        ee = r["end_to_end"] or {}
        srows.append([
            str(r["batch_size"]), _f(st["decode_ms_per_image"]),
            _f(st["preprocess_ms_per_image"]), _f(r["model_only"]["ms_per_image"]),
            _f(ee.get("sequential_ms_per_image")), _f(ee.get("ms_per_image")),
        ])
    return ["", f"stages, mean ms per image ({st['images']} images; decode and preprocess "
            "one at a time on one thread):",
            format_table(["batch", "decode", "preprocess", "inference", "sum", "end-to-end"],
                         srows)]


def render(result: dict[str, Any]) -> str:
    """The human-readable report of one run."""
    lines = [*_header(result), "", _figures_table(result)]
    st = result.get("stages")
    if st:
        lines += _stages_table(result, st)
    return "\n".join(lines)
