"""The ``simx`` command line: one module per command group, assembled in ``app``."""

from simx.cli.app import main

__all__ = ["main"]
