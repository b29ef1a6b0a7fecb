"""``simx info``: what a model file, an exported model id or a cache folder is."""

from __future__ import annotations

import json

import click

from simx.cli import params


@click.command("info")
@click.argument("target")
@params.json_flag("Print it as JSON.")
def info_cmd(target: str, as_json: bool) -> None:
    """Show what TARGET is: a model (.onnx path or exported id) or a cache folder."""
    from simx.report.info import info, render

    d = info(target)
    click.echo(json.dumps(d, indent=2) if as_json else render(d))
