"""``simx models``: the catalogue of exportable models, and which are already exported."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from simx.cli import params
from simx.core.errors import SimxError
from simx.model import catalogue

_PRECISION_ORDER = ("fp32", "fp16", "int8")


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
        if stem in catalogue.MODELS:
            out.setdefault(stem, []).append(precision)
    return {k: sorted(v, key=_PRECISION_ORDER.index) for k, v in out.items()}


def _row(e: catalogue.ModelEntry, exported: list[str]) -> dict[str, Any]:
    """One catalogue entry as ``--json`` prints it."""
    return {
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
        "exported": exported,
        "command": e.export_command,
    }


def _mean_std_name(mean: list[float], std: list[float]) -> str:
    names = {(catalogue.IMAGENET_MEAN, catalogue.IMAGENET_STD): "imagenet",
             (catalogue.OPENAI_MEAN, catalogue.OPENAI_STD): "openai",
             ((0.5,) * 3, (0.5,) * 3): "0.5", ((0.0,) * 3, (1.0,) * 3): "0/1"}
    return f"{names.get((tuple(mean), tuple(std)), 'custom')} mean/std"


def _preprocessing(r: dict[str, Any]) -> str:
    """The preprocessing column: resize, crop, normalization (and QuickGELU)."""
    pre = r["preprocess"]
    text = "{mode} {resize} {interpolation} -> crop {crop}, {norm}".format(
        mode="resize" if pre["resize_mode"] == "shortest" else pre["resize_mode"],
        norm=_mean_std_name(pre["mean"], pre["std"]),
        **pre,
    )
    return text + (", QuickGELU" if r["quick_gelu"] else "")


def _print_table(rows: list[dict[str, Any]]) -> None:
    head = ("id", "family", "dim", "params", "input", "preprocessing", "exported", "export command")
    table = [
        (r["id"], r["family"], str(r["dim"]), f"{r['params_m']:.0f}M", f"{r['input_size']}px",
         _preprocessing(r), ",".join(r["exported"]) or "-", r["command"])
        for r in rows
    ]
    widths = [max(len(x) for x in col) for col in zip(head, *table)]
    for line in [head, tuple("-" * w for w in widths), *table]:
        click.echo("  ".join(x.ljust(w) for x, w in zip(line, widths)).rstrip())


@click.command("models")
@click.argument("search", required=False)
@click.option("--family", type=click.Choice(catalogue.families()), default=None,
              help="Only this family.")
@click.option("--exported", "only_exported", is_flag=True,
              help="Only models already exported in the models folder.")
@params.json_flag("Print the catalogue as JSON.")
def models_cmd(search: str | None, family: str | None, only_exported: bool, as_json: bool) -> None:
    """List the models simx can export (SEARCH: a case-insensitive part of the id or source).

    Models already in the models folder ($SIMX_MODELS_DIR, else ./onnx_models) are marked
    with their precisions; each row shows the command that exports it.
    """
    from simx.run.session import models_dir

    have = _exported(models_dir())
    rows = [
        _row(e, have.get(e.id, []))
        for e in catalogue.MODELS.values()
        if (not family or e.family == family)
        and (not search or any(search.lower() in x.lower() for x in (e.id, e.source)))
        and (not only_exported or e.id in have)
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        raise SimxError("no model matches" + (f" {search!r}" if search else "")
                        + (f" in family {family}" if family else "")
                        + ("; see `simx models` for all" if search or family else ""))
    _print_table(rows)
