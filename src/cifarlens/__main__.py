"""``python -m cifarlens``: the same command line as ``cifarlens``."""

from cifarlens.cli import app

app(prog_name="cifarlens")
