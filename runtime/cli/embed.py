"""``simx embed``: embed image folders (or URIs, on Ray) into a crash-safe feature cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from simx.cli import params
from simx.core.errors import SimxError

EXIT_PARTIAL = 1  # simx embed: the run finished, but some files could not be embedded
EXIT_INTERRUPTED = 130  # simx embed: Ctrl-C; the work done so far is committed


def say_choice(enc: object) -> None:
    """What ``--precision auto`` chose and why, as one line on stderr (plus its warning)."""
    choice = getattr(enc, "choice", None)
    if choice:
        click.echo(f"simx: {choice['line']}", err=True)
        if choice.get("warning"):
            click.echo(f"simx: warning: {choice['warning']}", err=True)


def _check_paths(paths: tuple[str, ...], engine: str, ray_options: dict[str, Any]) -> None:
    """Every local PATH exists; Ray's options and URIs only with ``--engine ray``."""
    from simx.images.uri import is_uri

    missing = [p for p in paths if not is_uri(p) and not (Path(p).exists() or Path(p).is_symlink())]
    if missing:
        raise SimxError(f"no such file or folder: {', '.join(missing)}")
    if engine != "ray":
        ray_only = [n for n, v in ray_options.items() if v is not None]
        ray_only += [f"the URI {p}" for p in paths if is_uri(p)][:1]
        if ray_only:
            raise SimxError(f"{', '.join(ray_only)}: only with --engine ray")


def _encoder(o: dict[str, Any], run: dict[str, Any]) -> Any:
    """The local engine's Encoder; says what ``--precision auto`` chose."""
    from simx.run.encoder import Encoder

    enc = Encoder(o["model"], provider=o["provider"], threads=o["threads"],
                  exif_transpose=run["exif_transpose"], fast=run["fast"],
                  precision=run["precision"], device_id=run["device_id"],
                  provider_options=params.parse_options(run["provider_options"]))
    say_choice(enc)
    return enc


def _embed_locally(paths: tuple[str, ...], enc: Any, o: dict[str, Any],
                   commit: dict[str, Any]) -> Any:
    from simx.embed.pipeline import embed_into_cache

    return embed_into_cache([Path(p) for p in paths], enc, o["cache_dir"],
                            batch_size=o["batch_size"], **commit)


def _embed_on_ray(paths: tuple[str, ...], o: dict[str, Any], run: dict[str, Any],
                  commit: dict[str, Any], ray: dict[str, Any]) -> Any:
    from simx.embed.ray_engine import embed_on_ray

    return embed_on_ray(paths, o["model"], o["cache_dir"], address=ray["--address"],
                        workers=ray["--workers"] or 2,
                        gpus_per_worker=ray["--gpus-per-worker"] or 0.0, provider=o["provider"],
                        threads=o["threads"], exif_transpose=run["exif_transpose"],
                        fast=run["fast"], batch_size=o["batch_size"], **commit)


@click.command("embed")
# str, not Path: a URI (file:///x, s3://b/k) must reach the Ray engine unmangled.
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--model", "-m", default=None, help="An .onnx file, or a model id in $SIMX_MODELS_DIR.")
@click.option("--cache", "cache_dir", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="The cache folder (created if missing).")
@click.option("--config", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A sim-bench method YAML (configs/methods/*.yaml); command-line options win.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Images per inference call [default: 8 on the CPU, 32 on a GPU].")
@params.threads_option("onnxruntime intra-op threads [default: one per core].")
@params.provider_option("auto = CUDA when available, else CPU; never a silent fallback.")
@params.run_options
@click.option("--force", is_flag=True, help="Rebuild a cache made by another model or preprocessing.")
@click.option("--exif-transpose", is_flag=True, help="Apply EXIF orientation (PIL.Image.open does not).")
@click.option("--fast", is_flag=True, help="Approximate (not exact) resampling; faster, labelled.")
@click.option("--lock-timeout", type=params.ANY_SECONDS, default=0.0, show_default=True,
              help="Seconds to wait for another writer of the cache; 0 fails at once, -1 waits forever.")
@click.option("--commit-every", type=click.IntRange(min=0), default=0, show_default=True,
              help="Also commit every N images (0: time-based only).")
@click.option("--commit-seconds", type=params.NON_NEGATIVE, default=30.0, show_default=True,
              help="Commit at least this often during a long run.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: this process; ray: Ray Data actors on a cluster (simx-embed[ray]).")
@click.option("--address", default=None,
              help="--engine ray: a running Ray cluster (`auto`, or host:port) [default: start a local one].")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="--engine ray: encoder actors [default: 2].")
@click.option("--gpus-per-worker", type=params.NON_NEGATIVE, default=None,
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

    from simx.embed.simbench import apply_method_config

    given_provider = ctx.get_parameter_source("provider") != ParameterSource.DEFAULT
    o = apply_method_config(config, model=model, cache_dir=cache_dir, batch_size=batch_size,
                            provider=provider if given_provider else None, threads=threads)
    ray = {"--address": address, "--workers": workers, "--gpus-per-worker": gpus_per_worker}
    _check_paths(paths, engine, ray)
    run = {"exif_transpose": exif_transpose, "fast": fast, "precision": precision,
           "device_id": device_id, "provider_options": provider_options}
    commit = {"force": force, "lock_timeout": lock_timeout, "commit_every": commit_every,
              "commit_seconds": commit_seconds}
    enc = None if engine == "ray" else _encoder(o, run)
    try:
        if enc is None:
            report = _embed_on_ray(paths, o, run, commit, ray)
        else:
            report = _embed_locally(paths, enc, o, commit)
    except KeyboardInterrupt:
        click.echo("simx: interrupted; what was embedded is committed, re-run to finish", err=True)
        ctx.exit(EXIT_INTERRUPTED)
    click.echo(report.summary())
    for line in report.notes():
        click.echo(f"simx: {line}", err=True)
    if report.failed:
        ctx.exit(EXIT_PARTIAL)
