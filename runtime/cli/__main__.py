"""``python -m simx.cli``: the same as the ``simx`` command."""

from simx.cli.app import main

main()
