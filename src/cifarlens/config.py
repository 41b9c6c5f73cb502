"""Typed configs: one dataclass per command, layered defaults < preset < YAML file < flags.

Each field's trailing ``# comment`` is its ``--help`` text, so the dataclass is
the single place where an option is declared and documented.
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import tokenize
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from cifarlens.errors import ConfigError


def field_comments(cls: type) -> dict[str, str]:
    """Map each dataclass field of ``cls`` to its comment: the one after it on its line, else the block of comment
    lines right above it (a comment too long for one line)."""
    comments: dict[str, str] = {}
    above: list[str] = []  # comment lines since the last statement
    line_name: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(inspect.getsource(cls)).readline):
        row = tok.start[0]
        if tok.type == tokenize.COMMENT and row in line_name:
            comments[line_name[row]] = tok.string.lstrip("#").strip()
        elif tok.type == tokenize.COMMENT and tok.start[1] == 4:
            above.append(tok.string.lstrip("#").strip())
        elif tok.type == tokenize.NAME and row not in line_name and tok.start[1] == 4:
            line_name[row] = tok.string
            if above:
                comments[tok.string] = " ".join(above)
            above = []
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in comments.items() if k in names}


def field_types(cls: type) -> dict[str, Any]:
    """Resolved type annotations of the dataclass fields."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def coerce(name: str, value: Any, annotation: Any) -> Any:
    """Check ``value`` against ``annotation`` (int, float, str, bool, Literal, dict); return it converted."""
    origin = get_origin(annotation)
    if origin is Literal:
        choices = get_args(annotation)
        if value not in choices:
            raise ConfigError(f"invalid value {value!r} for {name}; choose one of: {', '.join(map(str, choices))}")
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "false", "yes", "no", "1", "0"}:
            return value.lower() in {"true", "yes", "1"}
        raise ConfigError(f"invalid value {value!r} for {name}; expected true or false")
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"invalid value {value!r} for {name}; expected an integer")
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"invalid value {value!r} for {name}; expected an integer") from None
    if annotation is float:
        if isinstance(value, bool):
            raise ConfigError(f"invalid value {value!r} for {name}; expected a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"invalid value {value!r} for {name}; expected a number") from None
    if annotation is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"invalid value {value!r} for {name}; expected text")
        return str(value)
    if annotation is dict or origin is dict:
        if isinstance(value, str):
            try:
                value = yaml.safe_load(value) if value.strip() else {}
            except yaml.YAMLError:
                raise ConfigError(
                    f"invalid value {value!r} for {name}; expected a mapping like '{{dropout: 0.2}}'"
                ) from None
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"invalid value {value!r} for {name}; expected a mapping like '{{dropout: 0.2}}'")
        return dict(value)
    if isinstance(annotation, types.UnionType) or origin is typing.Union:
        raise TypeError(f"config field {name}: union types are not supported")
    return value


def read_yaml(path: str | Path, *, where: str = "--config") -> dict[str, Any]:
    """Read a YAML mapping; a missing file or a non-mapping is a ``ConfigError``.

    ``where`` names the option or argument the path came from, for the error's fix.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found; check the path given to {where}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}; fix the syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of option: value")
    return data


def build_config(cls: type, *layers: dict[str, Any], sources: tuple[str, ...] = ()) -> Any:
    """Build ``cls`` from layered dicts, later layers winning; unknown keys are errors.

    ``sources`` names each layer for error messages (e.g. "recipe fast", "run.yaml").
    """
    hints = field_types(cls)
    values: dict[str, Any] = {}
    for i, layer in enumerate(layers):
        source = sources[i] if i < len(sources) else "options"
        for key, value in layer.items():
            name = key.replace("-", "_")
            if name not in hints:
                raise ConfigError(f"unknown option {key!r} in {source}; valid options: {', '.join(sorted(hints))}")
            if value is None:
                continue
            values[name] = coerce(name, value, hints[name])
    cfg = cls(**values)
    validate = getattr(cfg, "validate", None)
    if validate is not None:
        validate()
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain dict of a config dataclass, ready for YAML/JSON."""
    return dataclasses.asdict(cfg)
