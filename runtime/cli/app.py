"""The ``simx`` command line: the group ``main``, and the commands registered on it.

Each command lives in its own module (``models``, ``export``, ``embed``, ``bench``, ``info``,
``search``, ``cache``), parses options and calls into the library; heavy imports
(onnxruntime, and torch for ``simx export``) happen inside the command that needs them, so
``simx --help`` stays fast and the runtime never loads torch. This module imports the
command modules, never the other way round.

Library code raises ``SimxError``; ``main`` prints it as one line on stderr and exits 2.
"""

from __future__ import annotations

import sys

import click

from simx.cli.bench import bench_cmd
from simx.cli.cache import cache_group
from simx.cli.embed import embed_cmd
from simx.cli.export import export_group
from simx.cli.info import info_cmd
from simx.cli.models import models_cmd
from simx.cli.search import eval_cmd, search_cmd
from simx.core.errors import SimxError

EXIT_ERROR = 2  # a usage or input error: nothing (more) was done


def _one_line(e: Exception) -> str:
    """The error as ``simx: error: ...``; an OSError (disk, permissions, limits) with its file."""
    if isinstance(e, OSError) and not isinstance(e, SimxError):
        where = f": {e.filename}" if e.filename else ""
        return f"simx: error: {e.strerror or e}{where}"
    return f"simx: error: {e}"


class _Group(click.Group):
    """A click group that turns simx's own exceptions into one line and a non-zero exit."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (SimxError, OSError) as e:  # the environment's errors too: a line, not a traceback
            click.echo(_one_line(e), err=True)
            ctx.exit(EXIT_ERROR)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="simx-embed")
def main() -> None:
    """Fast, verified DINOv2, DINOv3 and OpenCLIP image embeddings with ONNX Runtime."""


for _command in (models_cmd, export_group, embed_cmd, bench_cmd, info_cmd, search_cmd, eval_cmd,
                 cache_group):
    main.add_command(_command)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
