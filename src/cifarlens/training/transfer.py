"""Transfer learning pieces of the trainer: model arguments, freezing, the head's parameters.

The *head* of a model is the top-level module holding its classifier, as its ``Capabilities``
declare (``fc`` of a ResNet, ``classifier`` of MobileNetV2/VGG/EfficientNet/ConvNeXt and of the
small nets, ``head`` of most timm models); everything else is the *backbone*.
"""

from __future__ import annotations

from torch import nn

from cifarlens.errors import ConfigError
from cifarlens.models import Capabilities, model_kwargs
from cifarlens.models.keras_models import is_keras_file, keras_path, read_keras_config
from cifarlens.training.config import TrainConfig, parse_freeze


def model_arguments(cfg: TrainConfig) -> tuple[dict, dict]:
    """(kwargs stored in the run's ModelSpec, kwargs to build the model for training).

    Pretrained models keep their ImageNet stem unless ``model_args`` say ``cifar_stem``; the stored
    kwargs say so explicitly and never include ``pretrained``, so the run rebuilds without hub weights.
    """
    stored = dict(cfg.model_args)
    if is_keras_file(cfg.model):  # the run keeps the file's architecture; the build reads its weights too
        config = stored.get("config") or read_keras_config(keras_path(cfg.model))
        return stored | {"config": config}, {k: v for k, v in stored.items() if k != "config"} | {
            "trust_code": cfg.trust_code
        }
    if cfg.pretrained and "cifar_stem" in model_kwargs(cfg.model):
        stored.setdefault("cifar_stem", False)
    return stored, stored | ({"pretrained": True} if cfg.pretrained else {})


def freeze(model: nn.Module, spec: str, caps: Capabilities) -> list[str]:
    """Set ``requires_grad=False`` on the parameters ``spec`` freezes; return their names.

    ``backbone`` freezes all but the head module the model's capabilities declare.
    ``until:LAYER`` freezes every parameter registered before the end of module LAYER
    (a ``named_modules`` name such as ``layer2`` or ``features.7``).
    """
    mode, layer = parse_freeze(spec)
    names = [name for name, _ in model.named_parameters()]
    if mode == "none":
        frozen: list[str] = []
    elif mode == "backbone":
        head = caps.head
        frozen = [n for n in names if n.split(".")[0] != head]
    else:
        modules = dict(model.named_modules())
        if not layer or layer not in modules:
            top = [name for name, _ in model.named_children()]
            raise ConfigError(
                f"--freeze until:{layer}: no module {layer!r} in {type(model).__name__}; top-level modules: "
                f"{', '.join(top)} (dotted names like {top[0]}.0 reach inside)"
            )
        inside = [i for i, n in enumerate(names) if n.startswith(layer + ".")]
        if inside:
            frozen = names[: inside[-1] + 1]
        else:  # a module without parameters (a pooling layer): freeze the modules before it
            order = {name: i for i, name in enumerate(modules)}
            frozen = [n for n in names if order[n.rpartition(".")[0]] < order[layer]]
    frozen_set = set(frozen)
    for name, param in model.named_parameters():
        if name in frozen_set:
            param.requires_grad_(False)
    return frozen


def train_mode(model: nn.Module) -> nn.Module:
    """``model.train()``, except BatchNorm layers whose parameters are all frozen stay in eval mode
    (their running statistics are part of what was frozen)."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                module.eval()
    return model


def head_parameter_ids(model: nn.Module, caps: Capabilities) -> set[int]:
    """``id`` of every parameter of the model's head module (``Capabilities.head``)."""
    return {id(p) for p in model.get_submodule(caps.head).parameters()}
