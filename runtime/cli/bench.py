"""``simx bench``: throughput, latency and efficiency, optionally gated against a baseline."""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import click

from simx.cli import params


def _batch_sizes(_ctx: click.Context, _param: click.Parameter, value: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(x) for x in value.split(",") if x.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None
    if not sizes or any(b < 1 for b in sizes):
        raise click.BadParameter(f"batch sizes must be positive integers, got {value!r}")
    return sizes


def _load_baseline(bench: ModuleType, baseline: Path | None, model: str, batch_sizes: tuple[int, ...],
                   with_images: bool) -> dict[str, Any] | None:
    """The --baseline result, checked against this run's model and settings before it starts."""
    if baseline is None:
        return None
    from simx.run.session import read_spec

    base = bench.load_result(baseline)
    bench.precheck(base, read_spec(model), batch_sizes, with_images)
    return base


def _write_outputs(bench: ModuleType, result: dict[str, Any], json_path: Path | None,
                   plot_path: Path | None) -> None:
    if json_path is not None:
        bench.write_result(result, json_path)
        click.echo(f"wrote {json_path}", err=True)
    if plot_path is not None:
        from simx.report.plot import plot_bench

        plot_bench([result], plot_path)
        click.echo(f"wrote {plot_path}", err=True)


@click.command("bench")
@click.option("--model", required=True, help="A model id in the models folder, or an .onnx path.")
@params.provider_option()
@params.run_options
@click.option("--batch-sizes", default="1,8,32", show_default=True, callback=_batch_sizes,
              help="Comma-separated batch sizes.")
@click.option("--images", type=click.Path(exists=True, path_type=Path), default=None,
              help="A folder of images: adds decode / preprocess / end-to-end figures.")
@click.option("--synthetic", is_flag=True, hidden=True,
              help="Ignored: random input tensors are already the default without --images "
                   "(kept so that old scripts still run).")
@click.option("--seconds", type=params.POSITIVE_SECONDS, default=5.0, show_default=True,
              help="Timed seconds per batch size (after warm-up).")
@params.threads_option("onnxruntime intra-op threads (default: all cores).")
@click.option("--warmup", type=params.COUNT, default=2, show_default=True, help="Untimed batches first.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write every figure and the machine facts to this file.")
@click.option("--rounds", type=click.IntRange(min=1), default=5, show_default=True,
              help="Alternations of reference sgemm and model per batch size.")
@click.option("--sgemm-size", type=click.IntRange(min=16), default=2048, show_default=True,
              help="Matrix size of the numpy sgemm reference.")
@click.option("--baseline", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="A JSON from an earlier --json run: exit 1 if a normalized figure regressed.")
@click.option("--max-regression", type=params.NON_NEGATIVE, default=0.10, show_default=True,
              help="Tolerated fall below the baseline (0.10 = 10%).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also draw throughput and efficiency against batch size into this PNG (simx-embed[viz]).")
def bench_cmd(model: str, provider: str, batch_sizes: tuple[int, ...], images: Path | None,
              synthetic: bool, seconds: float, threads: int | None, warmup: int,
              json_path: Path | None, rounds: int, sgemm_size: int, baseline: Path | None,
              max_regression: float, plot_path: Path | None, precision: str | None,
              provider_options: tuple[str, ...], device_id: int) -> None:
    """Measure throughput, latency and efficiency; optionally gate against a baseline.

    The gate compares efficiency (model GFLOP/s / numpy sgemm GFLOP/s, same run) and the
    end-to-end / model-only ratio, not raw img/s: shared machines are too noisy for that.
    Exit codes: 0 pass, 1 regression, 2 error (bad model, mismatched baseline, ...).
    """
    # --synthetic is the default without --images, and ignored; with --images it contradicts.
    if images is not None and synthetic:
        raise click.UsageError("--synthetic and --images exclude each other")
    import simx.bench as bench  # (numpy, onnx: only when benchmarking)

    if plot_path is not None:
        from simx.report.plot import check_output, check_viz

        check_viz()  # before minutes of benchmarking, not after
        check_output(plot_path, "--plot")
    base = _load_baseline(bench, baseline, model, batch_sizes, images is not None)
    cfg = bench.BenchConfig(model=model, provider=provider, batch_sizes=batch_sizes,
                            images=images, seconds=seconds, threads=threads, warmup=warmup,
                            rounds=rounds, sgemm_n=sgemm_size, precision=precision,
                            provider_options=params.parse_options(provider_options),
                            device_id=device_id)
    result = bench.run_bench(cfg, log=lambda m: click.echo(m, err=True))
    click.echo(bench.render(result))
    _write_outputs(bench, result, json_path, plot_path)
    if base is not None:
        report = bench.compare(result, base, max_regression)
        click.echo("")
        click.echo(bench.render_gate(report))
        if not report.passed:
            sys.exit(1)
