"""What tools need to know about an imported model, found once on the built model and written into its run:
the classifier, the CAM layer, the probe stages, whether it outputs probabilities, and that it runs at all."""

from __future__ import annotations

import torch
from torch import nn

from cifarlens.errors import ConfigError, first_line
from cifarlens.models import Capabilities
from cifarlens.models.layers import (
    default_stages,
    default_target_layer,
    gap_features,
    list_layers,
    map_size,
    takes_hooks,
)


def check_runs(model: nn.Module, image_size: int) -> int:
    """Run ``model`` on batches of 2 and 3 normalised (3, image_size, image_size) images; returns its number of
    outputs. A model that fails at that size, or only at one batch size, is a ``ConfigError`` with the fix."""
    shapes = []
    for batch in (2, 3):
        try:
            with torch.no_grad():
                out = model(torch.zeros(batch, 3, image_size, image_size))
        except Exception as err:  # the user's forward can raise anything
            fix = (
                "export it with a dynamic batch: torch.export.export(model, (x,), dynamic_shapes=({0: Dim.DYNAMIC},))"
                if batch == 3
                else "pass --image-size with the side it was trained at"
            )
            raise ConfigError(
                f"the model fails on a batch of {batch} {image_size}x{image_size} images "
                f"({type(err).__name__}: {first_line(err)}); {fix}"
            ) from None
        if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != batch:
            raise ConfigError(
                f"the model returns {type(out).__name__} {tuple(getattr(out, 'shape', ()))} for {batch} images; "
                "cifarlens needs one (N, classes) tensor of scores"
            )
        shapes.append(out.shape[1])
    return int(shapes[0])


def detect_output(model: nn.Module, x: torch.Tensor) -> str:
    """``probabilities`` when the outputs for the normalised batch ``x`` are non-negative and each row sums to 1
    (a softmax at the end), else ``logits`` (log-probabilities are logits already)."""
    with torch.no_grad():
        out = model(x).float()
    sums_to_one = torch.allclose(out.sum(dim=1), torch.ones(len(out)), atol=1e-3)
    return "probabilities" if bool((out >= 0).all()) and sums_to_one else "logits"


def find_capabilities(
    model: nn.Module,
    *,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    image_size: int,
    module_types: dict[str, str] | None = None,
    classifier: str = "",
    cam_layer: str = "",
) -> Capabilities:
    """The model's capabilities: its last ``nn.Linear`` (``classifier`` overrides), the deepest module whose
    output is at least 7x7 on a 32-px image (``cam_layer`` overrides), the probe stages (FX nodes where the model
    traces, module names where it does not), and the normalisation. TorchScript runs no forward hooks, so it
    gets neither a CAM layer nor probe stages. ``module_types`` names the class of modules that lost theirs
    (an unflattened torch.export program)."""
    modules = dict(model.named_modules())
    for flag, name in (("--classifier", classifier), ("--cam-layer", cam_layer)):
        if name and name not in modules:
            valid = ", ".join(n for n in modules if n)
            raise ConfigError(f"{flag} {name!r} is not a module of the model; its modules: {valid}")
    classifier = classifier or _last_linear(model, module_types or {})
    if not takes_hooks(model):
        return Capabilities(classifier, "", (), None, mean, std, mean, std, image_size)
    cam_layer = cam_layer or default_target_layer(model, image_size)
    map_size(model, cam_layer, image_size)  # a LayerError when the chosen layer has no spatial output
    stages = tuple(default_stages(list_layers(model, image_size)))
    gap = gap_features(model, classifier, image_size) if classifier else None
    return Capabilities(classifier, cam_layer, stages, gap, mean, std, mean, std, image_size)


def _last_linear(model: nn.Module, module_types: dict[str, str]) -> str:
    """The last module that is a Linear: by class, by TorchScript's ``original_name``, or by ``module_types``;
    "" for a model without one (an all-convolutional net)."""
    names = [
        name
        for name, m in model.named_modules()
        if name
        and (
            isinstance(m, nn.Linear)
            or getattr(m, "original_name", None) == "Linear"
            or module_types.get(name.removeprefix("body.")) == "Linear"
        )
    ]
    return names[-1] if names else ""
