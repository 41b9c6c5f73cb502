"""The ``cifarlens`` command line, the top layer: each module parses one command group's options, calls the
library function that does the work, prints and writes. ``main`` assembles them into one Typer app."""

from cifarlens.cli.main import app

__all__ = ["app"]
