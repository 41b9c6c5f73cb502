"""Model registry: every architecture is one function decorated with ``@register_model``.

``create_model(name, num_classes=10, **kwargs)`` builds it by name, so a run
directory that stores the name and kwargs can always rebuild its model. Names
``timm:<arch>`` build ``timm.create_model(arch, num_classes=..., **kwargs)``.
"""

from __future__ import annotations

import inspect
from typing import Callable

from torch import nn

from cifarlens.errors import ConfigError
from cifarlens.models.pretrained import check_timm_name, create_timm_model, is_timm

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register ``fn`` under its function name. ``fn(num_classes=10, **kwargs) -> nn.Module``."""
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"model {name!r} is registered twice")
    _MODELS[name] = fn
    return fn


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_MODELS)


def model_description(name: str) -> str:
    """First line of the model function's docstring."""
    doc = inspect.getdoc(_get(name)) or ""
    return doc.splitlines()[0] if doc else ""


def model_kwargs(name: str) -> dict[str, object]:
    """Keyword arguments the model accepts (besides ``num_classes``) with their defaults.

    For ``timm:<arch>`` only ``pretrained``: timm itself checks the others.
    """
    if is_timm(name):
        check_timm_name(name)
        return {"pretrained": False}
    sig = inspect.signature(_get(name))
    return {
        p.name: p.default
        for p in sig.parameters.values()
        if p.name != "num_classes" and p.default is not inspect.Parameter.empty
    }


def create_model(name: str, num_classes: int = 10, **kwargs) -> nn.Module:
    """Build the registered model ``name``; unknown names or arguments raise ``ConfigError``."""
    if is_timm(name):
        return create_timm_model(name, num_classes=num_classes, **kwargs)
    fn = _get(name)
    accepted = model_kwargs(name)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        valid = ", ".join(sorted(accepted)) or "none"
        raise ConfigError(
            f"model {name!r} does not take argument(s) {', '.join(unknown)}; valid arguments: {valid}"
        )
    return fn(num_classes=num_classes, **kwargs)


def _get(name: str) -> Callable[..., nn.Module]:
    try:
        return _MODELS[name]
    except KeyError:
        raise ConfigError(
            f"unknown model {name!r}; valid models: {', '.join(list_models())} "
            "(run `cifarlens models` to see them), or timm:<name> for a timm model"
        ) from None
