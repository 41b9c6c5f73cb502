"""Named presets of training options: ``--recipe NAME`` starts from one, flags override it."""

from __future__ import annotations

import torch

from cifarlens.errors import ConfigError
from cifarlens.training.config import TrainConfig

# TrainConfig's defaults are the `fast` recipe's values (a plain `cifarlens train` and `TrainConfig()`
# are the same run). Every other recipe starts from these plain values of the options `fast` sets,
# so that none inherits airbench's schedule, label smoothing, early image size or TTA by accident.
_PLAIN: dict[str, object] = {
    "bias_lr": 0.0,
    "head_lr": 0.0,
    "momentum": 0.9,
    "muon_momentum": 0.6,
    "nesterov": False,
    "weight_decay": 0.0,
    "whiten_bias_epochs": 0.0,
    "schedule": "constant",
    "warmup": 0.0,
    "label_smoothing": 0.0,
    "augment": "crop,flip",
    "crop_padding": 4,
    "early_size": 0,
    "early_epochs": 0,
    "early_mode": "resize",
    "tta": False,
    "tta_translate": False,
}

# Shared by the from-scratch torchvision recipes below.
_SGD_COSINE: dict[str, object] = _PLAIN | {
    "epochs": 30,
    "batch_size": 128,
    "optimizer": "sgd",
    "lr": 0.05,
    "momentum": 0.9,
    "nesterov": True,
    "weight_decay": 5e-4,
    "schedule": "cosine",
    "warmup": 1.0,
    "augment": "crop,flip",
}

# Our transcription of airbench94_muon (Jordan 2024) to this trainer, for comparisons:
# batch 2000, 8 epochs, Muon (lr 0.24, momentum 0.6) on conv filters, Nesterov SGD
# (momentum 0.85) on biases and head, whitening bias trained for 3 epochs, linear decay,
# label smoothing 0.2, alternating flip, 2-pixel translations, TTA over mirrors and one-pixel
# shifts (its level 2). Its sum-reduced loss is restated for our mean loss: bias lr 0.053 * 2000;
# the head lr and decay are rescaled to airnet's head (logits / 9 instead of a unit-std weight / 256).
_AIRBENCH94: dict[str, object] = _PLAIN | {
    "model": "airnet",
    "epochs": 8,
    "batch_size": 2000,
    "optimizer": "muon",
    "lr": 0.24,
    "muon_momentum": 0.6,
    "momentum": 0.85,
    "nesterov": True,
    "bias_lr": 106.0,
    "head_lr": 1.66,
    "weight_decay": 0.0024,
    "whiten_bias_epochs": 3.0,
    "schedule": "linear",
    "warmup": 0.0,
    "label_smoothing": 0.2,
    "augment": "crop,altflip",
    "crop_padding": 2,
    "tta": True,
}

_FAST: dict[str, object] = _AIRBENCH94 | {
    "early_size": 24,
    "early_epochs": 5,
    "early_mode": "resize",
    "tta_translate": True,
}

RECIPES: dict[str, dict[str, object]] = {
    # The default: airbench94's recipe with the first 5 of 8 epochs on images shrunk to 24x24 (half
    # the pixels: about half a CPU's time per epoch) and airbench's TTA with one-pixel shifts. Its
    # accuracy and time against airbench94: BENCHMARKS.md, "A 94% recipe on clean pixels".
    "fast": _FAST,
    # `fast` run longer: 10 epochs, 6 of them at 24x24. It matches airbench94's held-out accuracy in less
    # time than airbench94 on a CPU (BENCHMARKS.md, "Matching airbench94 in less time: fast10").
    "fast10": _FAST | {"early_epochs": 6, "epochs": 10},
    # The quick one: a quarter of the width, 6 epochs, torch.compile, and JPEG copies in the training
    # mix (they lift the score on the bundled JPEG-recovered test set); figures in BENCHMARKS.md.
    "fast90": _AIRBENCH94
    | {"augment": "crop,altflip,jpeg", "compile": True, "model_args": {"width": 32, "wide": 128}, "epochs": 6},
    # airbench94's full width and 8 epochs with the JPEG mix: the best score on JPEG-damaged test images.
    "fast95": _AIRBENCH94 | {"augment": "crop,altflip,jpeg", "compile": True},
    "airbench94": _AIRBENCH94 | {"tta_translate": True},
    # The best recipe of the seed reports: seed_bn8, Adam 5e-4, batch 60, 20 epochs.
    "seed": _PLAIN
    | {
        "model": "seed_bn8",
        "epochs": 20,
        "batch_size": 60,
        "optimizer": "adam",
        "lr": 5e-4,
        "schedule": "constant",
        "augment": "crop,flip",
    },
    # The PyTorch 60-minute-blitz setup: SGD 1e-3 momentum 0.9, batch 4, 2 epochs.
    "tutorial": _PLAIN
    | {
        "model": "tutorial",
        "epochs": 2,
        "batch_size": 4,
        "optimizer": "sgd",
        "lr": 1e-3,
        "momentum": 0.9,
        "schedule": "constant",
        "augment": "none",
        "channels_last": False,
    },
    # Small VGG of the seed reports: Adam 1e-3, batch 64, 15 epochs.
    "vgg_small": _PLAIN
    | {
        "model": "vgg_small",
        "epochs": 15,
        "batch_size": 64,
        "optimizer": "adam",
        "lr": 1e-3,
        "schedule": "constant",
        "augment": "crop,flip",
    },
    # Keras-style Conv-BN blocks of the seed reports: Adam 1e-3, batch 64, 25 epochs.
    "conv_blocks": _PLAIN
    | {
        "model": "conv_blocks",
        "epochs": 25,
        "batch_size": 64,
        "optimizer": "adam",
        "lr": 1e-3,
        "schedule": "constant",
        "augment": "crop,flip",
    },
    # A standard strong baseline: ResNet-18, SGD+Nesterov 0.1, cosine, 5e-4 weight decay.
    "resnet18": {"model": "resnet18"} | _SGD_COSINE | {"lr": 0.1, "label_smoothing": 0.1},
    # MobileNetV2 from scratch with the CIFAR stem: SGD 0.05, cosine, 30 epochs.
    "mobilenet_v2": {"model": "mobilenet_v2"} | _SGD_COSINE | {"weight_decay": 4e-5},
    # VGG16 with BatchNorm from scratch: SGD 0.05, cosine, 30 epochs.
    "vgg16": {"model": "vgg16"} | _SGD_COSINE,
}


# Recipes whose runs take seconds on a GPU: scoring the test split after every epoch would be a large share of them.
GPU_FAST_RECIPES = ("fast", "fast10", "fast90", "fast95", "airbench94")


def device_defaults(recipe: str, device: str) -> dict[str, object]:
    """Options recipe ``recipe`` takes on ``device`` (the --device value), above its own and below the YAML
    file and the flags: on CUDA the fast recipes score the test split at the end only
    (``--eval-test-every-epoch`` turns the per-epoch curve back on). The resolved value is saved in the run."""
    if recipe in GPU_FAST_RECIPES and device in ("auto", "cuda") and torch.cuda.is_available():
        return {"eval_test_every_epoch": False}
    return {}


def recipe_for_model(model: str) -> str:
    """The recipe made for ``model``: the one named after it, else the first that trains it, else ``seed``."""
    if model in RECIPES:
        return model
    return next((name for name, options in RECIPES.items() if options.get("model") == model), "seed")


def default_recipe(options: dict[str, object]) -> str:
    """The recipe options without a ``recipe`` start from: ``--model X`` alone trains X with the recipe
    made for it, and no model at all trains ``TrainConfig``'s (``fast``). The CLI and sweeps share it."""
    if options.get("recipe"):
        return str(options["recipe"])
    model = options.get("model")
    return recipe_for_model(str(model)) if model else TrainConfig.recipe


# A recipe's options counted in epochs: they follow --epochs when only that is changed.
EPOCH_COUNTED = ("early_epochs", "whiten_bias_epochs")


def scaled_to_epochs(preset: dict[str, object], *layers: dict[str, object]) -> tuple[dict[str, object], dict]:
    """``preset`` (a recipe's options) with its epoch-counted options (``EPOCH_COUNTED``) scaled by the
    epochs the later ``layers`` (YAML file, flags) set, except those the layers set themselves; and what
    changed, name -> (the recipe's value, the new one), ``epochs`` first. ``early_epochs`` stays a whole number
    of at least 1."""
    given = next((layer["epochs"] for layer in reversed(layers) if layer.get("epochs") is not None), None)
    recipe_epochs = preset.get("epochs")
    try:
        epochs = int(given)
    except (TypeError, ValueError):  # none given, or a bad value: build_config reports it in one line
        return preset, {}
    if not recipe_epochs or epochs == recipe_epochs or epochs < 1:
        return preset, {}
    ratio = epochs / int(recipe_epochs)
    set_by_user = {str(k).replace("-", "_") for layer in layers for k, v in layer.items() if v is not None}
    changed = {"epochs": (recipe_epochs, epochs)}
    for name in EPOCH_COUNTED:
        value = preset.get(name)
        if value and name not in set_by_user:
            changed[name] = (value, max(1, round(value * ratio)) if name == "early_epochs" else round(value * ratio, 4))
    return preset | {name: new for name, (_, new) in changed.items()}, changed


def recipe_options(name: str) -> dict[str, object]:
    """The option values of recipe ``name``; unknown names list the valid ones."""
    try:
        return dict(RECIPES[name])
    except KeyError:
        raise ConfigError(f"unknown recipe {name!r}; valid recipes: {', '.join(sorted(RECIPES))}") from None
