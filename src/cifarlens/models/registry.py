"""Model registry: every architecture is one function decorated with ``@register_model(...)``.

``create_model(name, num_classes=10, **kwargs)`` builds it by name, so a run
directory that stores the name and kwargs can always rebuild its model. Names
``timm:<arch>`` build ``timm.create_model(arch, num_classes=..., **kwargs)``; ``keras:<Application>`` and
``keras:<file>.keras`` build Keras models on the torch backend (``cifarlens.models.keras_models``).

The decorator also declares the model's ``Capabilities`` (as timm declares a ``pretrained_cfg`` with
each model): its classifier, CAM and probe layers, input normalisation and size, a data-dependent
init and parameters that stop training early. ``--freeze``, ``--backbone-lr``, ``--features-from``,
the optimizer, ``explain cam`` and the probes read them, so nothing guesses; only ``timm:`` models,
which declare nothing of ours, get them guessed (``guess_capabilities``, the one place that does).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from cifarlens.data.augment import CIFAR10_MEAN, CIFAR10_STD
from cifarlens.errors import ConfigError
from cifarlens.models.keras_models import capability_fields as keras_capability_fields
from cifarlens.models.keras_models import create_keras_model, is_keras, keras_kwargs
from cifarlens.models.layers import default_stages, default_target_layer, gap_features, list_layers
from cifarlens.models.pretrained import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    check_timm_name,
    create_timm_model,
    is_timm,
    timm_normalization,
)


@dataclass(frozen=True)
class Capabilities:
    """What tools need to know about a model, declared with it. Layer names are ``named_modules`` names,
    probe stages FX node names (``cifarlens explain layers RUN`` lists both)."""

    classifier: str  # the final nn.Linear; its top-level module is the head that --freeze backbone keeps training
    cam_layer: str  # default CAM target: a module called once per forward, output at least 7x7 on a 32-px image
    probe_stages: tuple[str, ...]  # what the depth-wise probe scores, shallow to deep
    gap_features: str | None = None  # module whose output is global-average-pooled into the classifier (original CAM)
    mean: tuple[float, ...] = CIFAR10_MEAN  # input normalisation when trained from scratch
    std: tuple[float, ...] = CIFAR10_STD
    pretrained_mean: tuple[float, ...] = IMAGENET_MEAN  # ... and with --pretrained weights
    pretrained_std: tuple[float, ...] = IMAGENET_STD
    input_size: int = 32  # side the model was designed for
    # fit data-dependent layers on normalised images
    init_from_data: Callable[[nn.Module, torch.Tensor], None] | None = None
    stop_early: tuple[str, ...] = ()  # parameters trained only for the first --whiten-bias-epochs epochs

    @property
    def head(self) -> str:
        """The top-level module holding the classifier."""
        return self.classifier.split(".")[0]

    # The fields a run stores for an imported model (the callables are our own models' alone).
    STORED = ("classifier", "cam_layer", "probe_stages", "gap_features", "mean", "std", "input_size")

    def to_dict(self) -> dict:
        return {name: list(v) if isinstance(v := getattr(self, name), tuple) else v for name in self.STORED}

    @classmethod
    def from_dict(cls, fields: dict) -> "Capabilities":
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items() if k in cls.STORED}
        return cls(**values, pretrained_mean=values["mean"], pretrained_std=values["std"])

    def normalization(self, pretrained: bool) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) of the model's inputs."""
        return (self.pretrained_mean, self.pretrained_std) if pretrained else (self.mean, self.std)


@dataclass(frozen=True)
class _Entry:
    build: Callable[..., nn.Module]
    capabilities: Capabilities


_MODELS: dict[str, _Entry] = {}


def register_model(**capabilities) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register the decorated ``fn(num_classes=10, **kwargs) -> nn.Module`` under its function name,
    with its ``Capabilities`` given as keyword arguments."""
    caps = Capabilities(**capabilities)

    def register(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = fn.__name__
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        _MODELS[name] = _Entry(fn, caps)
        return fn

    return register


def model_capabilities(name: str, model: nn.Module | None = None, image_size: int = 32) -> Capabilities:
    """The declared capabilities of model ``name``; for ``timm:`` models guessed from the built ``model``."""
    if is_keras(name):
        if model is None:
            raise ValueError("keras: models declare their capabilities when built: pass the built model")
        return Capabilities(**keras_capability_fields(model, image_size))
    if is_timm(name):
        if model is None:
            raise ValueError("timm models declare no capabilities: pass the built model to guess them from")
        return guess_capabilities(model, image_size)
    return _get(name).capabilities


def guess_capabilities(model: nn.Module, image_size: int = 32) -> Capabilities:
    """Capabilities read off a built model that declares none (``timm:`` models): the last Linear is the
    classifier, the last once-called spatial module the CAM layer, stage ends the probe stages, and
    timm's ``pretrained_cfg`` the normalisation."""

    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(f"{type(model).__name__} has no Linear classifier; cifarlens needs one")
    mean, std = timm_normalization(model)
    return Capabilities(
        classifier=linears[-1],
        cam_layer=default_target_layer(model, image_size),
        probe_stages=tuple(default_stages(list_layers(model, image_size))),
        gap_features=gap_features(model, linears[-1], image_size),
        pretrained_mean=mean,
        pretrained_std=std,
    )


def get_submodule(model: nn.Module, name: str) -> nn.Module:
    """The module a capability names; a name the model lacks is a bug in its declaration."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise ValueError(
            f"{type(model).__name__} has no module {name!r} (check its register_model declaration)"
        ) from None


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_MODELS)


def model_description(name: str) -> str:
    """First line of the model function's docstring."""
    doc = inspect.getdoc(_get(name).build) or ""
    return doc.splitlines()[0] if doc else ""


def model_kwargs(name: str) -> dict[str, object]:
    """Keyword arguments the model accepts (besides ``num_classes``) with their defaults.

    For ``timm:<arch>`` only ``pretrained``: timm itself checks the others.
    """
    if is_timm(name):
        check_timm_name(name)
        return {"pretrained": False}
    if is_keras(name):
        return keras_kwargs(name)
    sig = inspect.signature(_get(name).build)
    return {
        p.name: p.default
        for p in sig.parameters.values()
        if p.name != "num_classes" and p.default is not inspect.Parameter.empty
    }


def create_model(name: str, num_classes: int = 10, **kwargs) -> nn.Module:
    """Build the registered model ``name``; unknown names or arguments raise ``ConfigError``."""
    if is_timm(name):
        return create_timm_model(name, num_classes=num_classes, **kwargs)
    if is_keras(name):
        return create_keras_model(name, num_classes=num_classes, **kwargs)
    fn = _get(name).build
    accepted = model_kwargs(name)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        valid = ", ".join(sorted(accepted)) or "none"
        raise ConfigError(f"model {name!r} does not take argument(s) {', '.join(unknown)}; valid arguments: {valid}")
    return fn(num_classes=num_classes, **kwargs)


def _get(name: str) -> _Entry:
    try:
        return _MODELS[name]
    except KeyError:
        raise ConfigError(
            f"unknown model {name!r}; valid models: {', '.join(list_models())} "
            "(run `cifarlens models` to see them), timm:<name> for a timm model, or keras:<name> for a Keras one"
        ) from None
