"""``simx cache compact|export``: maintain a feature cache."""

from __future__ import annotations

from pathlib import Path

import click

from simx.cli import params


@click.group("cache")
def cache_group() -> None:
    """Maintain a feature cache: merge its segments, or export it as one file."""


@cache_group.command("compact")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--lock-timeout", type=params.ANY_SECONDS, default=0.0, show_default=True,
              help="Seconds to wait for another writer (-1: forever).")
def cache_compact_cmd(directory: Path, lock_timeout: float) -> None:
    """Merge the segments into one and drop dead rows (also automatic past 25% dead)."""
    from simx.cache import compact

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
    from simx.cache import export_cache

    n = export_cache(directory, fmt, output)
    click.echo(f"wrote {output}: {n} rows in path order")
