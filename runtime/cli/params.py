"""Click parameter types and options shared by the commands, so that every command refuses
the same values the same way (exit 2, before any work): NaN seconds would never elapse, and
zero or negative thread counts mean nothing to onnxruntime."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import click

from simx.run import providers


class FiniteFloat(click.ParamType):
    """A finite float, optionally bounded below (``minimum``, inclusive or not)."""

    name = "seconds"

    def __init__(self, minimum: float | None = None, *, strict: bool = False) -> None:
        self.minimum, self.strict = minimum, strict

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            x = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(x):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        if self.minimum is not None and (x < self.minimum or (self.strict and x == self.minimum)):
            rel = ">" if self.strict else ">="
            self.fail(f"{value!r} must be {rel} {self.minimum:g}", param, ctx)
        return x


POSITIVE_SECONDS = FiniteFloat(0.0, strict=True)
NON_NEGATIVE = FiniteFloat(0.0)
ANY_SECONDS = FiniteFloat()  # e.g. --lock-timeout, where -1 means "wait forever"
THREADS = click.IntRange(min=1)
COUNT = click.IntRange(min=0)


# Provider and precision names come from the one table (simx.run.providers).
PROVIDER = click.Choice(providers.CHOICES)
PRECISION = click.Choice(providers.PRECISION_CHOICES)


def run_options(f: Any) -> Any:
    """--precision, --provider-option and --device-id: how the chosen provider runs the file."""
    f = click.option("--device-id", type=click.IntRange(min=0), default=0, show_default=True,
                     help="GPU index for the CUDA and TensorRT providers.")(f)
    f = click.option("--provider-option", "provider_options", multiple=True, metavar="KEY=VALUE",
                     help="An onnxruntime provider option, over simx's defaults; repeatable.")(f)
    f = click.option("--precision", type=PRECISION, default=None,
                     help="Run-time precision of an fp32 file: bf16 (OpenVINO, CPUs with bf16 "
                          "units), fp16 (TensorRT); auto = the fastest path that passes the "
                          "accuracy gate, measured once per host and model [default: the file's].")(f)
    return f


# Options several commands share; the help text, where it differs, is the caller's.
def provider_option(help: str | None = None) -> Any:
    """--provider: one of the provider table's names, ``auto`` by default."""
    return click.option("--provider", type=PROVIDER, default="auto", show_default=True, help=help)


def threads_option(help: str | None = None) -> Any:
    """--threads: onnxruntime intra-op threads (>= 1), none = its own default."""
    return click.option("--threads", type=THREADS, default=None, help=help)


def json_flag(help: str) -> Any:
    """--json, as the flag ``as_json``: print the result as JSON instead of text."""
    return click.option("--json", "as_json", is_flag=True, help=help)


def html_option(help: str) -> Any:
    """--html, as ``html_path``: also write a self-contained HTML page to this file."""
    return click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path),
                        default=None, help=help)


def check_html_output(html_path: Path | None) -> None:
    """Refuse an unwritable --html path before any work, not after it."""
    if html_path is not None:
        from simx.report.html import check_output

        check_output(html_path)


def parse_options(items: tuple[str, ...]) -> dict[str, str]:
    """--provider-option KEY=VALUE items as a dict (onnxruntime is not imported here)."""
    return providers.parse_options(items)
