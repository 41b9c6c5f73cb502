"""What every ``cifarlens`` command shares: the consoles, one-line user errors, options from dataclasses.

Command groups in other modules (``cifarlens.cli.explain`` ...) import from here, not from
``cifarlens.cli``, which imports them.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
import sys
import typing
import warnings
from typing import Annotated, Any, Callable, Literal, Optional, get_origin

import typer
from rich.console import Console
from rich.markup import escape

from cifarlens.config import field_comments, field_types
from cifarlens.errors import CifarlensError, TrainingInterrupted

PIPED_WIDTH = 200

# Piped or logged, rich would wrap at 80 columns, cutting table cells and --help to a word a line: off a
# terminal, and unless COLUMNS says otherwise, every rich console (ours and typer's --help) gets a wide line.
if not sys.stdout.isatty() and not os.environ.get("COLUMNS"):
    os.environ["COLUMNS"] = str(PIPED_WIDTH)

# soft_wrap: lines never break inside a path, so a printed run folder or file can be copied whole.
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    err_console.print(f"[yellow]warning:[/] {message}", highlight=False)


def user_errors(fn: Callable) -> Callable:
    """Turn ``CifarlensError`` into one red line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        warnings.showwarning = _one_line_warning
        try:
            return fn(*args, **kwargs)
        except CifarlensError as err:
            label = "[yellow]interrupted:[/]" if isinstance(err, TrainingInterrupted) else "[bold red]error:[/]"
            err_console.print(f"{label} {escape(str(err))}", highlight=False)  # "[tf]" in a message is not markup
            raise typer.Exit(err.exit_code) from None

    return wrapper


def config_options(cls: type, defaults: dict[str, Any], skip: tuple[str, ...] = ()) -> list[inspect.Parameter]:
    """One keyword-only ``--option`` per dataclass field (but those in ``skip``: the command's arguments), help
    from the field's comment.

    Every option defaults to None so that only flags the user typed override lower layers.
    """

    comments = field_comments(cls)
    params = []
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        annotation = field_types(cls)[f.name]
        help_text = comments.get(f.name, "")
        if get_origin(annotation) is Literal:
            annotation = str
        elif annotation is dict:
            annotation = str
        default = defaults.get(f.name)
        if default not in (None, "", {}):
            help_text += f" (default: {default})"
        flag = "--" + f.name.replace("_", "-")
        decls = [f"{flag}/--no-{f.name.replace('_', '-')}"] if annotation is bool else [flag]
        option = typer.Option(*decls, help=help_text, show_default=False)
        params.append(
            inspect.Parameter(
                f.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[Optional[annotation], option]
            )
        )
    return params


def with_config_options(cls: type, defaults: dict[str, Any], skip: tuple[str, ...] = ()) -> Callable:
    """Give ``fn(**fixed, options: dict)`` a signature with ``cls``'s fields (but ``skip``) as options."""

    def decorate(fn: Callable) -> Callable:
        # Resolved here, in fn's module: typer would evaluate string annotations in this module's globals.
        hints = typing.get_type_hints(fn, include_extras=True)
        fixed = [
            p.replace(annotation=hints.get(name, p.annotation))
            for name, p in inspect.signature(fn).parameters.items()
            if name != "options"
        ]
        generated = config_options(cls, defaults, skip)
        names = {p.name for p in generated}

        @functools.wraps(fn)
        def wrapper(**kwargs):
            options = {k: v for k, v in kwargs.items() if k in names and v is not None}
            rest = {k: v for k, v in kwargs.items() if k not in names}
            return fn(**rest, options=options)

        wrapper.__signature__ = inspect.Signature(fixed + generated)
        wrapper.__annotations__ = {p.name: p.annotation for p in fixed + generated}
        del wrapper.__wrapped__
        return wrapper

    return decorate
