"""Model registry and the built-in CIFAR-10 architectures."""

from cifarlens.models import fast, small, torchvision_models  # noqa: F401  (registers the models)
from cifarlens.models.registry import (
    Capabilities,
    create_model,
    guess_capabilities,
    list_models,
    model_capabilities,
    model_description,
    model_kwargs,
    register_model,
)
from cifarlens.models.summary import count_parameters, summarize

__all__ = [
    "Capabilities",
    "guess_capabilities",
    "model_capabilities",
    "count_parameters",
    "create_model",
    "list_models",
    "model_description",
    "model_kwargs",
    "register_model",
    "summarize",
]
