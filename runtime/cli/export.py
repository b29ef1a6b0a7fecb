"""``simx export dinov2|dinov3|openclip``: write a verified, self-describing .onnx file.

``simx.export`` (and so torch) is imported only inside a command that runs an export, so
``import simx.cli`` and ``simx --help`` never load it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import click

from simx.core.errors import SimxError
from simx.model import catalogue

# What `simx export` imports, some only deep inside a run: all are checked before it starts.
EXPORT_MODULES = ("torch", "torchvision", "timm", "open_clip", "onnx", "onnxscript", "onnxruntime")


def _export_options(f: Any) -> Any:
    """The options every ``simx export`` subcommand shares."""
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


def _missing(modules: tuple[str, ...]) -> list[str]:
    out = []
    for m in modules:
        try:
            if importlib.util.find_spec(m) is None:
                out.append(m)
        except (ImportError, ValueError):  # a module set to None in sys.modules, or broken
            out.append(m)
    return out


def _run_export(entry: catalogue.ModelEntry, **kw: Any) -> None:
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


@click.group("export")
def export_group() -> None:
    """Export a model to a verified, self-describing .onnx file (needs simx-embed[export])."""


@export_group.command("dinov2")
@click.option("--variant", required=True, help="small, base, large or giant.")
@click.option("--registers", is_flag=True, help="The variant with 4 register tokens.")
@_export_options
def export_dinov2(variant: str, registers: bool, **kw: Any) -> None:
    """Export a DINOv2 backbone (normalized CLS token)."""
    _run_export(catalogue.dinov2(variant, registers), **kw)


@export_group.command("dinov3")
@click.option("--variant", required=True,
              help="small, small_plus, base, large, huge_plus (or 7b, tiny with --qkvb).")
@click.option("--qkvb", is_flag=True, help="The variant with q/k/v biases (timm's _qkvb).")
@click.option("--tag", default=None, help="timm's pretrained tag (default lvd1689m).")
@_export_options
def export_dinov3(variant: str, qkvb: bool, tag: str | None, **kw: Any) -> None:
    """Export a DINOv3 backbone (CLS token after the final norm)."""
    _run_export(catalogue.dinov3(variant, qkvb, tag), **kw)


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
                    **kw: Any) -> None:
    """Export an OpenCLIP image tower (encode_image)."""
    if tokenizer is not None and not text:
        raise SimxError("--tokenizer is for the text tower: add --text")
    _run_export(catalogue.openclip(model_name, pretrained), text=text,
                **({"tokenizer": tokenizer} if tokenizer is not None else {}), **kw)
