"""The ``simx`` command line.

Each command parses options and calls into the library; heavy imports (onnxruntime,
and torch for ``simx export``) happen inside the command that needs them, so
``simx --help`` stays fast and the runtime never loads torch.

Library code raises ``SimxError``; ``main`` prints it as one line on stderr and exits 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from simx.cli import params as cliparams
from simx.model import catalogue as registry
from simx.core.errors import SimxError

EXIT_ERROR = 2  # a usage or input error: nothing (more) was done


class _Group(click.Group):
    """A click group that turns simx's own exceptions into one line and a non-zero exit."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except SimxError as e:
            click.echo(f"simx: error: {e}", err=True)
            ctx.exit(EXIT_ERROR)
        except OSError as e:  # the environment (disk, permissions, limits): one line, not a traceback
            where = f": {e.filename}" if e.filename else ""
            click.echo(f"simx: error: {e.strerror or e}{where}", err=True)
            ctx.exit(EXIT_ERROR)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="simx-embed")
def main() -> None:
    """Fast, verified DINOv2, DINOv3 and OpenCLIP image embeddings with ONNX Runtime."""


# --------------------------------------------------------------------------- models
def _exported(models: Path) -> dict[str, list[str]]:
    """id -> the precisions already exported in ``models`` (``<id>[-int8|-fp16].onnx``)."""
    out: dict[str, list[str]] = {}
    if not models.is_dir():
        return out
    for f in sorted(models.glob("*.onnx")):
        stem, precision = f.stem, "fp32"
        for p in ("int8", "fp16"):
            if stem.endswith(f"-{p}"):
                stem, precision = stem[: -len(p) - 1], p
        if stem in registry.MODELS:
            out.setdefault(stem, []).append(precision)
    order = ("fp32", "fp16", "int8")
    return {k: sorted(v, key=order.index) for k, v in out.items()}


@main.command("models")
@click.argument("search", required=False)
@click.option("--family", type=click.Choice(registry.families()), default=None,
              help="Only this family.")
@click.option("--exported", "only_exported", is_flag=True,
              help="Only models already exported in the models folder.")
@click.option("--json", "as_json", is_flag=True, help="Print the catalogue as JSON.")
def models_cmd(search: str | None, family: str | None, only_exported: bool, as_json: bool) -> None:
    """List the models simx can export (SEARCH: a case-insensitive part of the id or source).

    Models already in the models folder ($SIMX_MODELS_DIR, else ./onnx_models) are marked
    with their precisions; each row shows the command that exports it.
    """
    from simx.run.session import models_dir

    have = _exported(models_dir())
    rows = []
    for e in registry.MODELS.values():
        if family and e.family != family:
            continue
        if search and not any(search.lower() in x.lower() for x in (e.id, e.source)):
            continue
        if only_exported and e.id not in have:
            continue
        rows.append(
            {
                "id": e.id,
                "family": e.family,
                "variant": e.variant,
                "source": e.source,
                "dim": e.dim,
                "params_m": e.params_m,
                "input_size": e.default_size,
                "patch_size": e.patch_size,
                "quick_gelu": e.quick_gelu,
                "text": e.text,
                "preprocess": {
                    "resize": e.resize,
                    "resize_mode": e.resize_mode,
                    "interpolation": e.interpolation,
                    "crop": e.default_size,
                    "mean": list(e.mean),
                    "std": list(e.std),
                },
                "exported": have.get(e.id, []),
                "command": e.export_command,
            }
        )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        raise SimxError("no model matches" + (f" {search!r}" if search else "")
                        + (f" in family {family}" if family else "")
                        + ("; see `simx models` for all" if search or family else ""))
    head = ("id", "family", "dim", "params", "input", "preprocessing", "exported", "export command")
    table = [
        (
            r["id"],
            r["family"],
            str(r["dim"]),
            f"{r['params_m']:.0f}M",
            f"{r['input_size']}px",
            "{mode} {resize} {interpolation} -> crop {crop}, {norm}".format(
                mode="resize" if r["preprocess"]["resize_mode"] == "shortest"
                else r["preprocess"]["resize_mode"],
                norm=_mean_std_name(r["preprocess"]["mean"], r["preprocess"]["std"]),
                **r["preprocess"],
            )
            + (", QuickGELU" if r["quick_gelu"] else ""),
            ",".join(r["exported"]) or "-",
            r["command"],
        )
        for r in rows
    ]
    widths = [max(len(x) for x in col) for col in zip(head, *table)]
    for line in [head, tuple("-" * w for w in widths), *table]:
        click.echo("  ".join(x.ljust(w) for x, w in zip(line, widths)).rstrip())


def _mean_std_name(mean: list[float], std: list[float]) -> str:
    names = {(registry.IMAGENET_MEAN, registry.IMAGENET_STD): "imagenet",
             (registry.OPENAI_MEAN, registry.OPENAI_STD): "openai",
             ((0.5,) * 3, (0.5,) * 3): "0.5", ((0.0,) * 3, (1.0,) * 3): "0/1"}
    return f"{names.get((tuple(mean), tuple(std)), 'custom')} mean/std"


# --------------------------------------------------------------------------- export
def _export_options(f):
    f = click.option(
        "--weights",
        default="pretrained",
        show_default=True,
        help="'pretrained' (download via timm/open_clip), 'random' (speed tests only), "
        "or a checkpoint PATH.",
    )(f)
    f = click.option(
        "--output-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=Path("onnx_models"),
        show_default=True,
    )(f)
    f = click.option("--image-size", type=int, default=None,
                     help="Input size; a multiple of the patch size. Default: the model's own "
                     "(224 for DINO, the tag's size for OpenCLIP).")(f)
    f = click.option("--opset", type=int, default=18, show_default=True)(f)
    f = click.option(
        "--precision",
        type=click.Choice(["fp32", "fp16", "int8"]),
        default="fp32",
        show_default=True,
        help="int8 for the CPU, fp16 for the GPU; each is accuracy-gated and gets its own file.",
    )(f)
    f = click.option(
        "--int8",
        type=click.Choice(["static", "dynamic"]),
        default="static",
        show_default=True,
        help="int8 recipe: static QDQ (calibrated on bundled photos, batch-invariant, runs in "
        "batches) or dynamic (scales per batch; the Encoder runs it one image at a time).",
    )(f)
    return f


# What `simx export` imports, some only deep inside a run: all are checked before it starts.
EXPORT_MODULES = ("torch", "torchvision", "timm", "open_clip", "onnx", "onnxscript", "onnxruntime")


def _missing(modules: tuple[str, ...]) -> list[str]:
    import importlib.util

    out = []
    for m in modules:
        try:
            if importlib.util.find_spec(m) is None:
                out.append(m)
        except (ImportError, ValueError):  # a module set to None in sys.modules, or broken
            out.append(m)
    return out


def _run_export(entry: registry.ModelEntry, **kw) -> None:
    kw["image_size"] = kw.get("image_size") or entry.default_size
    missing = _missing(EXPORT_MODULES)
    if missing:
        extra = "cpu,export" if missing == ["onnxruntime"] else "export"
        raise SimxError(f"simx export needs {', '.join(missing)}, which this install lacks: "
                        f"pip install 'simx-embed[{extra}]'")
    try:
        from simx.export.api import export_model
    except ImportError as e:
        raise SimxError(
            f"simx export needs the export extra ({e.name or e} is missing): "
            "pip install 'simx-embed[export]'"
        ) from None
    written = export_model(entry, log=lambda m: click.echo(f"simx: {m}", err=True), **kw)
    # (a path, or [image, text] with --text)
    for path in written if isinstance(written, list) else [written]:
        click.echo(str(path))


@main.group("export")
def export_group() -> None:
    """Export a model to a verified, self-describing .onnx file (needs simx-embed[export])."""


@export_group.command("dinov2")
@click.option("--variant", required=True, help="small, base, large or giant.")
@click.option("--registers", is_flag=True, help="The variant with 4 register tokens.")
@_export_options
def export_dinov2(variant: str, registers: bool, **kw) -> None:
    """Export a DINOv2 backbone (normalized CLS token)."""
    _run_export(registry.dinov2(variant, registers), **kw)


@export_group.command("dinov3")
@click.option("--variant", required=True,
              help="small, small_plus, base, large, huge_plus (or 7b, tiny with --qkvb).")
@click.option("--qkvb", is_flag=True, help="The variant with q/k/v biases (timm's _qkvb).")
@click.option("--tag", default=None, help="timm's pretrained tag (default lvd1689m).")
@_export_options
def export_dinov3(variant: str, qkvb: bool, tag: str | None, **kw) -> None:
    """Export a DINOv3 backbone (CLS token after the final norm)."""
    _run_export(registry.dinov3(variant, qkvb, tag), **kw)


@export_group.command("openclip")
@click.option("--model", "model_name", required=True,
              help="Any model of open_clip.list_pretrained() (see `simx models`).")
@click.option("--pretrained", required=True, help="The open_clip pretrained tag.")
@click.option("--text", is_flag=True, help="Also export the text tower.")
@click.option("--tokenizer", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None, help="With --text, for models with a Hugging Face tokenizer (SigLIP ...): "
              "a folder with its tokenizer.json; default: the local HF cache, then the hub.")
@_export_options
def export_openclip(model_name: str, pretrained: str, text: bool, tokenizer: Path | None,
                    **kw) -> None:
    """Export an OpenCLIP image tower (encode_image)."""
    if tokenizer is not None and not text:
        raise SimxError("--tokenizer is for the text tower: add --text")
    _run_export(registry.openclip(model_name, pretrained), text=text,
                **({"tokenizer": tokenizer} if tokenizer is not None else {}), **kw)


# --------------------------------------------------------------------------- embed
def parse_options(items: tuple[str, ...]) -> dict[str, str]:
    from simx.run.providers import parse_options as parse

    return parse(items)


def _say_choice(enc: object) -> None:
    """What ``--precision auto`` chose and why, as one line on stderr (plus its warning)."""
    choice = getattr(enc, "choice", None)
    if choice:
        click.echo(f"simx: {choice['line']}", err=True)
        if choice.get("warning"):
            click.echo(f"simx: warning: {choice['warning']}", err=True)


EXIT_PARTIAL = 1  # simx embed: the run finished, but some files could not be embedded
EXIT_INTERRUPTED = 130  # simx embed: Ctrl-C; the work done so far is committed


@main.command("embed")
# str, not Path: a URI (file:///x, s3://b/k) must reach the Ray engine unmangled.
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--model", "-m", default=None, help="An .onnx file, or a model id in $SIMX_MODELS_DIR.")
@click.option("--cache", "cache_dir", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="The cache folder (created if missing).")
@click.option("--config", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A sim-bench method YAML (configs/methods/*.yaml); command-line options win.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Images per inference call [default: 8 on the CPU, 32 on a GPU].")
@click.option("--threads", type=cliparams.THREADS, default=None,
              help="onnxruntime intra-op threads [default: one per core].")
@click.option("--provider", type=cliparams.PROVIDER, default="auto",
              show_default=True, help="auto = CUDA when available, else CPU; never a silent fallback.")
@cliparams.run_options
@click.option("--force", is_flag=True, help="Rebuild a cache made by another model or preprocessing.")
@click.option("--exif-transpose", is_flag=True, help="Apply EXIF orientation (PIL.Image.open does not).")
@click.option("--fast", is_flag=True, help="Approximate (not exact) resampling; faster, labelled.")
@click.option("--lock-timeout", type=cliparams.ANY_SECONDS, default=0.0, show_default=True,
              help="Seconds to wait for another writer of the cache; 0 fails at once, -1 waits forever.")
@click.option("--commit-every", type=click.IntRange(min=0), default=0, show_default=True,
              help="Also commit every N images (0: time-based only).")
@click.option("--commit-seconds", type=cliparams.NON_NEGATIVE, default=30.0, show_default=True,
              help="Commit at least this often during a long run.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: this process; ray: Ray Data actors on a cluster (simx-embed[ray]).")
@click.option("--address", default=None,
              help="--engine ray: a running Ray cluster (`auto`, or host:port) [default: start a local one].")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="--engine ray: encoder actors [default: 2].")
@click.option("--gpus-per-worker", type=cliparams.NON_NEGATIVE, default=None,
              help="--engine ray: GPUs each actor reserves [default: 0].")
@click.pass_context
def embed_cmd(ctx: click.Context, paths: tuple[str, ...], model: str | None,
              cache_dir: Path | None, config: Path | None, batch_size: int | None,
              threads: int | None, provider: str, force: bool, exif_transpose: bool, fast: bool,
              lock_timeout: float, commit_every: int, commit_seconds: float, engine: str,
              address: str | None, workers: int | None, gpus_per_worker: float | None,
              precision: str | None, provider_options: tuple[str, ...], device_id: int) -> None:
    """Embed the images under PATH... into a crash-safe feature cache.

    Folders are walked recursively. The cache mirrors PATH...: a re-run embeds only new
    or changed files (size or mtime), drops rows of files no longer under PATH... and
    retries failed ones. Bad files never stop the run: each gets one line in
    failed.jsonl. Kill it at any moment and re-run: nothing committed is lost or
    embedded twice. A second writer on the same cache fails at once (or waits, with
    --lock-timeout); readers never wait.

    \b
    Exit codes:
      0  every image was embedded
      1  the run finished, but some files failed (see failed.jsonl in the cache)
      2  usage, model or cache error (nothing more was done)
      130  interrupted (Ctrl-C); the work done so far is committed
    """
    from click.core import ParameterSource

    from simx.run.encoder import Encoder
    from simx.embed.pipeline import embed_into_cache
    from simx.embed.simbench import apply_method_config

    given_provider = ctx.get_parameter_source("provider") != ParameterSource.DEFAULT
    o = apply_method_config(config, model=model, cache_dir=cache_dir, batch_size=batch_size,
                            provider=provider if given_provider else None, threads=threads)
    model, cache_dir, batch_size, provider, threads = (
        o["model"], o["cache_dir"], o["batch_size"], o["provider"], o["threads"])
    from simx.images.uri import is_uri

    missing = [p for p in paths if not is_uri(p) and not (Path(p).exists() or Path(p).is_symlink())]
    if missing:
        raise SimxError(f"no such file or folder: {', '.join(missing)}")
    if engine != "ray":
        ray_only = [n for n, v in (("--address", address), ("--workers", workers),
                                   ("--gpus-per-worker", gpus_per_worker)) if v is not None]
        ray_only += [f"the URI {p}" for p in paths if is_uri(p)][:1]
        if ray_only:
            raise SimxError(f"{', '.join(ray_only)}: only with --engine ray")
    enc = None if engine == "ray" else Encoder(
        model, provider=provider, threads=threads, exif_transpose=exif_transpose, fast=fast,
        precision=precision, device_id=device_id, provider_options=parse_options(provider_options))
    if enc is not None:
        _say_choice(enc)
    try:
        if enc is None:
            from simx.embed.ray_engine import embed_on_ray

            report = embed_on_ray(paths, model, cache_dir, address=address, workers=workers or 2,
                                  gpus_per_worker=gpus_per_worker or 0.0, provider=provider,
                                  threads=threads, exif_transpose=exif_transpose, fast=fast,
                                  batch_size=batch_size, force=force, lock_timeout=lock_timeout,
                                  commit_every=commit_every, commit_seconds=commit_seconds)
        else:
            report = embed_into_cache([Path(p) for p in paths], enc, cache_dir,
                                      batch_size=batch_size, force=force,
                                      lock_timeout=lock_timeout, commit_every=commit_every,
                                      commit_seconds=commit_seconds)
    except KeyboardInterrupt:
        click.echo("simx: interrupted; what was embedded is committed, re-run to finish", err=True)
        ctx.exit(EXIT_INTERRUPTED)
    click.echo(report.summary())
    for line in report.notes():
        click.echo(f"simx: {line}", err=True)
    if report.failed:
        ctx.exit(EXIT_PARTIAL)

# --------------------------------------------------------------------------- bench
# (bench helper: simx bench)
def _batch_sizes(_ctx: click.Context, _param: click.Parameter, value: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(x) for x in value.split(",") if x.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None
    if not sizes or any(b < 1 for b in sizes):
        raise click.BadParameter(f"batch sizes must be positive integers, got {value!r}")
    return sizes


@main.command("bench")
@click.option("--model", required=True, help="A model id in the models folder, or an .onnx path.")
@click.option("--provider", type=cliparams.PROVIDER, default="auto", show_default=True)
@cliparams.run_options
@click.option("--batch-sizes", default="1,8,32", show_default=True, callback=_batch_sizes,
              help="Comma-separated batch sizes.")
@click.option("--images", type=click.Path(exists=True, path_type=Path), default=None,
              help="A folder of images: adds decode / preprocess / end-to-end figures.")
@click.option("--synthetic", is_flag=True, help="Random input tensors (the default without --images).")
@click.option("--seconds", type=cliparams.POSITIVE_SECONDS, default=5.0, show_default=True,
              help="Timed seconds per batch size (after warm-up).")
@click.option("--threads", type=cliparams.THREADS, default=None,
              help="onnxruntime intra-op threads (default: all cores).")
@click.option("--warmup", type=cliparams.COUNT, default=2, show_default=True, help="Untimed batches first.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write every figure and the machine facts to this file.")
@click.option("--rounds", type=click.IntRange(min=1), default=5, show_default=True,
              help="Alternations of reference sgemm and model per batch size.")
@click.option("--sgemm-size", type=click.IntRange(min=16), default=2048, show_default=True,
              help="Matrix size of the numpy sgemm reference.")
@click.option("--baseline", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="A JSON from an earlier --json run: exit 1 if a normalized figure regressed.")
@click.option("--max-regression", type=cliparams.NON_NEGATIVE, default=0.10, show_default=True,
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
    from simx.bench import run as bench

    if images is not None and synthetic:
        raise click.UsageError("--images and --synthetic exclude each other")
    if plot_path is not None:
        from simx.report.plot import check_output, check_viz

        check_viz()  # before minutes of benchmarking, not after
        check_output(plot_path, "--plot")
    base = None
    if baseline is not None:
        from simx.run.session import read_spec

        base = bench.load_result(baseline)
        bench.precheck(base, read_spec(model), batch_sizes, images is not None)
    cfg = bench.BenchConfig(model=model, provider=provider, batch_sizes=batch_sizes,
                            images=images, seconds=seconds, threads=threads, warmup=warmup,
                            rounds=rounds, sgemm_n=sgemm_size, precision=precision,
                            provider_options=parse_options(provider_options), device_id=device_id)
    result = bench.run_bench(cfg, log=lambda m: click.echo(m, err=True))
    click.echo(bench.render(result))
    if json_path is not None:
        bench.write_result(result, json_path)
        click.echo(f"wrote {json_path}", err=True)
    if plot_path is not None:
        from simx.report.plot import plot_bench

        plot_bench([result], plot_path)
        click.echo(f"wrote {plot_path}", err=True)
    if base is not None:
        report = bench.compare(result, base, max_regression)
        click.echo("")
        click.echo(bench.render_gate(report))
        if not report.passed:
            sys.exit(1)

# --------------------------------------------------------------------------- info
@main.command("info")
@click.argument("target")
@click.option("--json", "as_json", is_flag=True, help="Print it as JSON.")
def info_cmd(target: str, as_json: bool) -> None:
    """Show what TARGET is: a model (.onnx path or exported id) or a cache folder."""
    from simx.report.info import info, render

    d = info(target)
    click.echo(json.dumps(d, indent=2) if as_json else render(d))


# --------------------------------------------------------------------------- search / eval
# (retrieval helper: simx search, simx eval)
@main.command("search")
@click.argument("queries", nargs=-1, type=click.Path(path_type=Path))
@click.option("--cache", "cache_dir", required=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A feature cache filled by `simx embed`.")
@click.option("--text", "texts", multiple=True, help="A text query (needs the model's -text.onnx); repeatable.")
@click.option("-k", "k", type=click.IntRange(min=1), default=10, show_default=True, help="Results per query.")
@click.option("--index", type=click.Choice(["exact", "faiss"]), default="exact", show_default=True,
              help="exact: numpy cosine; faiss: a FAISS index saved next to the cache (simx-embed[faiss]).")
@click.option("--model", "-m", default=None,
              help="The model that filled the cache, when cache.json's id is not in $SIMX_MODELS_DIR.")
@click.option("--provider", type=cliparams.PROVIDER, default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write a self-contained HTML page with thumbnails of every result.")
def search_cmd(queries: tuple[Path, ...], cache_dir: Path, texts: tuple[str, ...], k: int,
               index: str, model: str | None, provider: str, as_json: bool,
               html_path: Path | None) -> None:
    """Find the K most similar cached images to each QUERY image or --text (cosine)."""
    from simx.retrieval.search import search_cache

    if html_path is not None:
        from simx.report.html import check_output

        check_output(html_path)
    results = search_cache(cache_dir, [str(q) for q in queries], list(texts), k=k, index=index,
                           model=model, provider=provider)
    if html_path is not None:
        from simx.report.html import write_search_report

        write_search_report(html_path, results, cache_dir, k=k, index=index, model=model)
        click.echo(f"wrote {html_path}", err=True)
    if as_json:
        click.echo(json.dumps(results, indent=2, ensure_ascii=False))
        return
    for res in results:
        click.echo(f"{res['kind']} query: {res['query']}")
        for h in res["hits"]:
            click.echo(f"  {h['rank']:>3}  {h['score']:.4f}  {h['path']}")


@main.command("eval")
@click.option("--dataset", type=click.Choice(["ukbench", "holidays"]), required=True)
@click.option("--root", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="The unpacked dataset (ukbench*.jpg, or Holidays' 100000.jpg..., or their full/ jpg/).")
@click.option("--model", "-m", required=True, help="An .onnx file, or a model id in $SIMX_MODELS_DIR.")
@click.option("--cache", "cache_dir", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Feature cache for this dataset [default: $SIMX_CACHE_DIR or ~/.cache/simx].")
@click.option("--batch-size", type=click.IntRange(min=1), default=None)
@click.option("--threads", type=cliparams.THREADS, default=None)
@click.option("--provider", type=cliparams.PROVIDER, default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write an HTML page: the metric, a histogram, and the worst queries' results.")
@click.option("--html-rows", type=click.IntRange(min=0), default=200, show_default=True,
              help="Queries shown in the --html page, worst first (0: all).")
def eval_cmd(dataset: str, root: Path, model: str, cache_dir: Path | None, batch_size: int | None,
             threads: int | None, provider: str, as_json: bool, html_path: Path | None,
             html_rows: int) -> None:
    """Retrieval quality: UKBench N-S score, or Holidays mAP (INRIA protocol) and mAP@10."""
    from simx.retrieval.datasets import evaluate

    if html_path is not None:
        from simx.report.html import check_output

        check_output(html_path)
    r = evaluate(dataset, root, model, cache_dir=cache_dir, batch_size=batch_size,
                 provider=provider, threads=threads, detail=html_path is not None)
    if html_path is not None:
        from simx.report.html import write_eval_report

        write_eval_report(html_path, r, max_rows=html_rows)
        click.echo(f"wrote {html_path}", err=True)
        r.pop("per_query", None)
    if as_json:
        click.echo(json.dumps(r, indent=2))
        return
    m = r["metrics"]
    score = (f"N-S score {m['ns_score']:.3f} / 4" if dataset == "ukbench"
             else f"mAP {m['map']:.4f}, mAP@10 {m['map_at_10']:.4f}")
    click.echo(f"{r['dataset']} ({r['images']} images, {r['queries']} queries) with {r['model']} "
               f"[{r['weights']}]: {score}; embedded {r['embedded']}, reused {r['reused']}")



# --------------------------------------------------------------------------- cache
@main.group("cache")
def cache_group() -> None:
    """Maintain a feature cache: merge its segments, or export it as one file."""


@cache_group.command("compact")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--lock-timeout", type=cliparams.ANY_SECONDS, default=0.0, show_default=True,
              help="Seconds to wait for another writer (-1: forever).")
def cache_compact_cmd(directory: Path, lock_timeout: float) -> None:
    """Merge the segments into one and drop dead rows (also automatic past 25% dead)."""
    from simx.cache.store import compact

    r = compact(directory, lock_timeout=lock_timeout)
    click.echo(f"compacted {directory}: {r['rows']} rows, {r['segments_before']} segments -> 1, "
               f"{r['dead_dropped']} dead rows dropped; {r['bytes_before']} -> {r['bytes_after']} bytes")


@cache_group.command("export")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["npy", "parquet"]), required=True,
              help="npy: float32 [N, D] only; parquet: path, stat and embedding per row.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The file to write.")
def cache_export_cmd(directory: Path, fmt: str, output: Path) -> None:
    """Write a cache's live rows, in path order, to one file."""
    from simx.cache.export import export_cache

    n = export_cache(directory, fmt, output)
    click.echo(f"wrote {output}: {n} rows in path order")

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
