"""``simx bench --plot``: throughput and efficiency against batch size, as a PNG.

Why matplotlib is optional: the runtime is what edge hosts install, and matplotlib with
its font cache is larger than the rest of it. It lives in the ``viz`` extra
(``pip install 'simx-embed[viz]'``) and is imported only inside these functions.

What is drawn, from ``simx bench`` result dicts (``simx-bench/1``, read defensively so
that results extended with more execution paths plot without changes here):

* left: images per second against batch size, one colour per measured path (provider
  and precision); solid = model only, dashed = end to end (decode + preprocess +
  inference, overlapped), when the run had ``--images``;
* right: efficiency, the model's GFLOP/s as a share of the run's own reference GEMM
  (numpy float32 matmul on all cores), the figure the CI gate compares. On a GPU the
  reference is a CPU measurement, so efficiency is n/a there and the panel says so.
"""

from __future__ import annotations

import io
import math
import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from simx.core.errors import SimxError
from simx.report.html import check_output, write_file


class PlotError(SimxError):
    """A plot that cannot be drawn: matplotlib missing, or nothing measured to draw."""


def check_viz() -> None:
    """Fail early (before a minutes-long benchmark) when matplotlib is not installed."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise PlotError("--plot needs matplotlib: pip install 'simx-embed[viz]'") from None


def _short_provider(name: Any) -> str:
    return str(name or "?").removesuffix("ExecutionProvider")


def _rows_of(result: dict[str, Any]) -> Iterable[tuple[str, str, dict[str, Any]]]:
    """(provider, precision, row) for every measured row, wherever the result keeps it.

    A row's own ``provider``/``precision`` win; else a ``paths`` entry's; else what the
    run says it ran (``precision.ran``/``precision.provider``); else its config and model.
    """
    cfg = result.get("config") or {}
    model = result.get("model") or {}
    ran = result.get("precision") if isinstance(result.get("precision"), dict) else {}
    run_provider = (ran.get("provider") or cfg.get("provider")
                    or (cfg.get("providers") or [None])[0] or cfg.get("provider_requested"))
    run_precision = ran.get("ran") or model.get("precision")
    groups: list[tuple[dict[str, Any], list[Any]]] = []
    paths = result.get("paths")
    if isinstance(paths, list) and all(isinstance(p, dict) for p in paths):
        groups += [(p, p.get("results") or []) for p in paths]
    if isinstance(result.get("results"), list):
        groups.append(({}, result["results"]))
    for outer, rows in groups:
        for row in rows:
            if not isinstance(row, dict) or "batch_size" not in row:
                continue
            prov = row.get("provider") or outer.get("provider") or run_provider
            prec = row.get("precision") or outer.get("precision") or run_precision or "?"
            yield _short_provider(prov), str(prec), row


def _num(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def bench_series(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One series per (model, provider, precision): batch sizes, model-only and end-to-end
    img/s, efficiency. What :func:`plot_bench` draws, and what a test can check."""
    series: dict[tuple[str, str, str], dict[str, Any]] = {}
    for res in results:
        model_id = str((res.get("model") or {}).get("id", "?"))
        for prov, prec, row in _rows_of(res):
            s = series.setdefault((model_id, prov, prec), {
                "model": model_id, "provider": prov, "precision": prec,
                "batch": [], "img_s": [], "e2e_img_s": [], "efficiency": [],
                "e2e_efficiency": [], "efficiency_precision": []})
            mo = row.get("model_only") or {}
            e2e = row.get("end_to_end") or {}
            s["batch"].append(int(row["batch_size"]))
            s["img_s"].append(_num(mo.get("img_s")))
            s["e2e_img_s"].append(_num(e2e.get("img_s")) if isinstance(e2e, dict) else None)
            eff = _num(mo.get("efficiency"))
            s["efficiency"].append(eff)
            s["efficiency_precision"].append(_num(mo.get("efficiency_same_precision",
                                                       mo.get("efficiency_precision"))))
            # The end-to-end line on the efficiency panel: the same GFLOPs delivered through
            # decode and preprocess, i.e. efficiency x (end-to-end / model-only), per run.
            ratio = _num(e2e.get("ratio_to_model_only")) if isinstance(e2e, dict) else None
            s["e2e_efficiency"].append(eff * ratio if (eff is not None and ratio is not None)
                                       else None)
    out = []
    for s in series.values():  # sort each series by batch size
        order = sorted(range(len(s["batch"])), key=s["batch"].__getitem__)
        for key in ("batch", "img_s", "e2e_img_s", "efficiency", "e2e_efficiency",
                    "efficiency_precision"):
            s[key] = [s[key][i] for i in order]
        out.append(s)
    return out


def _nan(xs: Sequence[float | None]) -> list[float]:
    return [float("nan") if v is None else v for v in xs]


def _pct(xs: Sequence[float | None]) -> list[float]:
    return [float("nan") if v is None else 100 * v for v in xs]


def _title(results: Sequence[dict[str, Any]]) -> str:
    r = results[0]
    mach = r.get("machine") or {}
    refs = [g for x in results if (g := _num((x.get("reference") or {}).get("gflops")))]
    load = mach.get("load_average_1_5_15")
    models = sorted({str((x.get("model") or {}).get("id", "?")) for x in results})
    parts = [", ".join(models),
             f"{mach.get('cpu_model', '?')} ({mach.get('logical_cores', '?')} logical cores)"]
    if refs:
        parts.append("reference GEMM " + " / ".join(f"{g:.0f}" for g in refs) + " GFLOP/s")
    if isinstance(load, list) and load:
        parts.append(f"load {load[0]}")
    return "simx bench: " + " | ".join(parts)


def plot_bench(results: Sequence[dict[str, Any]], out: str | os.PathLike[str],
               dpi: int = 110) -> list[dict[str, Any]]:
    """Draw one or more bench results into a PNG at ``out``; returns the series drawn."""
    check_viz()
    import matplotlib

    matplotlib.use("Agg", force=True)  # files only; never open a window
    import matplotlib.pyplot as plt

    series = bench_series(results)
    if not any(v is not None for s in series for v in s["img_s"]):
        raise PlotError("nothing to plot: the benchmark result has no measured batch sizes")
    check_output(out, "--plot")
    several_models = len({s["model"] for s in series}) > 1
    fig, (ax_t, ax_e) = plt.subplots(1, 2, figsize=(12, 4.6), dpi=dpi)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    any_eff = False
    for i, s in enumerate(series):
        c = colours[i % len(colours)]
        name = f"{s['provider']} {s['precision']}"
        if several_models:
            name = f"{s['model']} {name}"
        ax_t.plot(s["batch"], _nan(s["img_s"]),
                  "o-", color=c, label=f"{name}, model only")
        if any(v is not None for v in s["e2e_img_s"]):
            ax_t.plot(s["batch"], _nan(s["e2e_img_s"]),
                      "s--", color=c, label=f"{name}, end to end")
        if any(v is not None for v in s["efficiency"]):
            any_eff = True
            ax_e.plot(s["batch"], _pct(s["efficiency"]), "o-", color=c, label=f"{name}, model only")
        if any(v is not None for v in s["e2e_efficiency"]):
            ax_e.plot(s["batch"], _pct(s["e2e_efficiency"]), "s--", color=c,
                      label=f"{name}, end to end")
        if any(v is not None for v in s["efficiency_precision"]):
            any_eff = True  # against a GEMM in the path's own precision and provider
            ax_e.plot(s["batch"], _pct(s["efficiency_precision"]), "^:", color=c,
                      label=f"{name}, vs GEMM in {s['precision']} on {s['provider']}")
    batches = sorted({b for s in series for b in s["batch"]})
    for ax in (ax_t, ax_e):
        ax.set_xscale("log", base=2)
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.minorticks_off()
        ax.set_xlabel("batch size")
        ax.grid(True, alpha=0.3)
    ax_t.set_ylabel("images / s")
    ax_t.set_ylim(bottom=0)
    ax_t.set_title("throughput")
    ax_t.legend(fontsize=8)
    ax_e.set_ylabel("model GFLOP/s as % of reference GEMM (fp32 numpy)")
    ax_e.set_title("efficiency against the reference GEMM")
    if any_eff:
        ax_e.set_ylim(bottom=0)
        ax_e.legend(fontsize=8)
    else:
        ax_e.text(0.5, 0.5, "n/a: no GFLOP count, or a GPU run\n(the reference is a CPU GEMM)",
                  ha="center", va="center", transform=ax_e.transAxes, color="#666")
    fig.suptitle(_title(results), fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    write_file(out, buf.getvalue(), "--plot")
    return series


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m simx.report.plot A.json B.json -o paths.png``: several ``simx bench --json``
    results (other providers or precisions) in one figure."""
    import argparse

    from simx.bench import load_result

    ap = argparse.ArgumentParser(prog="python -m simx.report.plot", description=main.__doc__)
    ap.add_argument("results", nargs="+", help="simx bench --json files")
    ap.add_argument("-o", "--output", required=True, help="the PNG to write")
    args = ap.parse_args(argv)
    try:
        series = plot_bench([load_result(p) for p in args.results], args.output)
    except SimxError as e:
        print(f"simx: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}: " + ", ".join(f"{s['provider']} {s['precision']}" for s in series))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
