"""``keras:<Application>`` and ``keras:<file>.keras``: Keras 3 models trained and read as PyTorch modules.

Under Keras 3's torch backend a ``keras.Model`` runs on torch tensors and its variables are torch
``Parameter``s. ``KerasNet`` wraps one so that it looks like any cifarlens model:

* the Keras part is the feature extractor, built in the ``channels_first`` data format so our NCHW
  batches go in as they are and its intermediate tensors are NCHW like every other model's (Keras's
  torch convolutions transpose a channels-last tensor to channels-first and back on every call;
  BENCHMARKS.md has the measured step times of both);
* every spatial Keras layer output is passed through a named ``nn.Identity`` tap (``taps.<layer>``)
  so hooks see it: CAMs, probes and feature extraction find their layers as on any model;
* the classifier is a torch ``nn.Linear`` (an application's global-average-pooled features, or the last
  ``Dense`` of a user's model, whose kernel and bias it takes over; a softmax there is dropped, so the
  model gives logits);
* the Keras variables are registered under fixed names (``keras_vars.v0000_kernel`` ...), because
  Keras names unnamed layers from a per-session counter.

A user's ``.keras`` file is read only with ``safe_mode=True``; a Lambda layer (Python code) is refused
unless trust is given (``--trust-code``, or ``CIFARLENS_TRUST_CODE=1`` when a run is rebuilt).
The run stores the file's Keras config JSON, so it is rebuilt without the file.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import sys
import zipfile
from pathlib import Path

import torch
from torch import nn

from cifarlens.data.cifar10 import keras_home
from cifarlens.errors import CifarlensError, ConfigError, first_line
from cifarlens.models.layers import default_stages, default_target_layer, list_layers
from cifarlens.models.pretrained import IMAGENET_MEAN, IMAGENET_STD, WeightsUnavailable, offline
from cifarlens.models.trust import TRUST_ENV, trusted

KERAS_PREFIX = "keras:"

# Each mode as the (mean, std) of our normalisation ``(x / 255 - mean) / std`` on RGB input; ``caffe``
# also flips RGB to BGR inside the model (KerasNet.forward). keras.applications.imagenet_utils has the modes.
PREPROCESSING = {
    "scale": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),  # x / 255: what the seed report fed its Keras models
    "tf": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # x / 127.5 - 1
    "torch": (IMAGENET_MEAN, IMAGENET_STD),
    "caffe": ((123.68 / 255, 116.779 / 255, 103.939 / 255), (1 / 255, 1 / 255, 1 / 255)),  # x - mean, BGR
    "raw": ((0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255)),  # 0-255: the model rescales inside
}

# keras.applications names and the preprocessing their ImageNet weights expect (each module's preprocess_input).
APPLICATIONS = {
    "Xception": "tf",
    "VGG16": "caffe",
    "VGG19": "caffe",
    "ResNet50": "caffe",
    "ResNet101": "caffe",
    "ResNet50V2": "tf",
    "InceptionV3": "tf",
    "MobileNet": "tf",
    "MobileNetV2": "tf",
    "MobileNetV3Small": "raw",
    "MobileNetV3Large": "raw",
    "DenseNet121": "torch",
    "EfficientNetB0": "raw",
    "EfficientNetB1": "raw",
    "EfficientNetV2B0": "raw",
    "ConvNeXtTiny": "raw",
}


def is_keras(name: str) -> bool:
    return name.startswith(KERAS_PREFIX)


def is_keras_file(name: str) -> bool:
    return is_keras(name) and name.endswith(".keras")


def keras_path(name: str) -> Path:
    return Path(name[len(KERAS_PREFIX) :]).expanduser()


def import_keras():
    """Keras on the torch backend; sets ``KERAS_BACKEND=torch`` when Keras is not imported yet."""
    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = "torch"
    # Keras imports TensorFlow when it is installed, whose C++ logs ("Could not find cuda drivers") would follow
    # every command's output; a user who sets TF_CPP_MIN_LOG_LEVEL gets their own level.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        import keras
    except ImportError:
        raise ConfigError("keras: models need Keras 3; pip install 'cifarlens[keras]'") from None
    backend = keras.backend.backend()
    if backend != "torch":
        raise ConfigError(
            f"Keras was imported with the {backend} backend before cifarlens; keras: models need the torch backend: "
            "set KERAS_BACKEND=torch before importing Keras (or import cifarlens first)"
        )
    return keras


def keras_kwargs(name: str) -> dict[str, object]:
    """The model arguments of a ``keras:`` model with their defaults (the name is checked)."""
    if is_keras_file(name):
        return {"config": None, "preprocess": "scale", "trust_code": False}
    application_name(name)
    return {"pretrained": False}


def application_name(name: str) -> str:
    app = name[len(KERAS_PREFIX) :]
    if app not in APPLICATIONS:
        raise ConfigError(
            f"unknown Keras model {name!r}; use keras:PATH.keras for your own model or one of the applications "
            + ", ".join(f"keras:{a}" for a in APPLICATIONS)
        )
    return app


# ---- the wrapper ---------------------------------------------------------------------------------------------


class KerasNet(nn.Module):
    """A headless Keras model (NCHW in) + taps on its spatial layers + global pooling + an ``nn.Linear`` head."""

    def __init__(self, body, taps: list[str], num_classes: int, preprocess: str, channels_first: bool = True):
        super().__init__()
        object.__setattr__(self, "body", body)  # not a submodule: its variables are registered below
        self.preprocess = preprocess
        self.channels_first = channels_first
        self.keras_vars = nn.ParameterDict(
            {f"v{i:04d}_{v.name}": v.value for i, v in enumerate(body.variables)}  # the Keras variables themselves
        )
        self.tap_names = taps
        self.taps = nn.ModuleDict({tap_name(t): nn.Identity() for t in taps})
        self.features = nn.Identity()
        features = body.outputs[-1].shape
        self.pool = nn.AdaptiveAvgPool2d(1) if len(features) == 4 else nn.Identity()
        self.flatten = nn.Flatten()
        width = features[1] if channels_first or len(features) == 2 else features[-1]
        self.classifier = nn.Linear(int(width), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, 3, H, W) normalised -> logits (N, num_classes)."""
        if self.preprocess == "caffe":
            x = x.flip(1)  # caffe-mode weights expect BGR
        if not self.channels_first:
            x = x.permute(0, 2, 3, 1)
        # A frozen Keras part runs in inference mode, as Keras runs a layer whose trainable is False.
        training = self.training and any(p.requires_grad for p in self.keras_vars.values())
        outputs = self.body(x, training=training)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        for name, out in zip(self.tap_names, outputs[:-1]):
            self.taps[tap_name(name)](out)  # the same tensor the Keras graph goes on with: hooks see its gradient
        features = outputs[-1]
        if not self.channels_first and features.ndim == 4:
            features = features.permute(0, 3, 1, 2)
        return self.classifier(self.flatten(self.pool(self.features(features))))


def tap_name(layer: str) -> str:
    return "".join(c if c.isalnum() or c == "_" else "_" for c in layer)


def _with_taps(keras, model, features, channels_first: bool):
    """(model from ``model``'s inputs to its spatial layer outputs and ``features``, the tapped layer names)."""
    taps, outputs = [], []
    if channels_first:
        for layer in model.layers[1:]:  # after the InputLayer
            out = _single_output(layer)
            # Paddings only enlarge the map before a strided conv: not a place to look at.
            padding = layer.__class__.__name__.startswith("ZeroPadding")
            if out is not None and len(out.shape) == 4 and out is not features and not padding:
                taps.append(layer.name)
                outputs.append(out)
    return keras.Model(model.inputs, outputs + [features]), taps


def _single_output(layer):
    try:
        out = layer.output
    except (AttributeError, ValueError):  # a layer called more than once has no single output
        return None
    return None if isinstance(out, (list, tuple)) else out


def capability_fields(model: KerasNet, image_size: int) -> dict:
    """What a KerasNet declares, as ``Capabilities`` fields (the registry builds them): its Linear head, taps for
    CAMs and probes, its preprocessing."""

    mean, std = PREPROCESSING[model.preprocess]
    return {
        "classifier": "classifier",
        "cam_layer": default_target_layer(model, image_size),
        "probe_stages": tuple(default_stages(list_layers(model, image_size))),
        "gap_features": "features" if isinstance(model.pool, nn.AdaptiveAvgPool2d) else None,
        "mean": mean,
        "std": std,
        "pretrained_mean": mean,
        "pretrained_std": std,
    }


# ---- building ---------------------------------------------------------------------------------------------------


def create_keras_model(name: str, num_classes: int = 10, **kwargs) -> KerasNet:
    """``keras:<Application>`` (``pretrained``), or ``keras:<file>.keras`` (``config``, ``preprocess``,
    ``trust_code``)."""
    accepted = keras_kwargs(name)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ConfigError(
            f"Keras model {name!r} does not take argument(s) {', '.join(unknown)}; valid: {', '.join(accepted)}"
        )
    keras = import_keras()
    # Keras draws initial weights and dropout seeds from its own generators: seed them from torch's, which the
    # trainer seeds, so a seeded run is the same run.
    keras.utils.set_random_seed(int(torch.randint(2**31 - 1, ()).item()))
    with _fixed_names(keras):
        if is_keras_file(name):
            return _user_model(keras, name, num_classes, **kwargs)
        return _application(keras, application_name(name), num_classes, bool(kwargs.get("pretrained")))


def _application(keras, app: str, num_classes: int, pretrained: bool) -> KerasNet:
    build = getattr(keras.applications, app)
    previous = keras.config.image_data_format()
    keras.config.set_image_data_format("channels_first")
    try:
        with _weights_from_cache(keras, app):
            base = build(include_top=False, weights="imagenet" if pretrained else None, input_shape=(3, None, None))
    except (OSError, ValueError) as err:
        if isinstance(err, CifarlensError):
            raise
        reason = first_line(err)
        raise WeightsUnavailable(f"could not load Keras's {app} weights: {reason}; delete the file and retry") from None
    finally:
        keras.config.set_image_data_format(previous)
    body, taps = _with_taps(keras, base, base.outputs[0], channels_first=True)
    return KerasNet(body, taps, num_classes, APPLICATIONS[app])


@contextlib.contextmanager
def _weights_from_cache(keras, app: str):
    """Make the applications take their weights file from Keras's cache as it is, and download only when allowed.

    Each application asks ``file_utils.get_file`` for its file; the one hook that sees the file name for
    every application (names depend on the model's options). A cached file is used without its hash check,
    so a file written by ``save`` of the same architecture loads as well.
    """
    from keras.src.utils import file_utils

    original = file_utils.get_file

    def get_file(fname, origin=None, cache_subdir="models", **kwargs):
        folder = keras_home() / cache_subdir
        path = folder / fname
        if path.is_file():
            return str(path)
        where = f"save {origin} as {path} (the folder is $KERAS_HOME/{cache_subdir}, default ~/.keras/{cache_subdir})"
        if offline():
            raise WeightsUnavailable(
                f"pretrained weights {fname} (keras:{app}) are not cached and downloads are off; {where}"
            )
        try:
            return original(fname, origin, cache_subdir=cache_subdir, cache_dir=str(keras_home()), **kwargs)
        except Exception as err:  # get_file wraps every download failure in a bare Exception
            reason = first_line(err)
            raise WeightsUnavailable(
                f"could not get pretrained weights {fname} (keras:{app}): {reason}; {where}"
            ) from None

    file_utils.get_file = get_file
    try:
        yield
    finally:
        file_utils.get_file = original


@contextlib.contextmanager
def _fixed_names(keras):
    """Keras names unnamed layers from per-session counters; a fresh counter gives the same names on every build."""
    from keras.src.backend.common import global_state

    saved = global_state.get_global_attribute("object_name_uids")
    global_state.set_global_attribute("object_name_uids", None)
    try:
        yield
    finally:
        global_state.set_global_attribute("object_name_uids", saved)


# ---- a user's .keras file ----------------------------------------------------------------------------------------


def read_keras_config(path: Path) -> dict:
    """The model's config JSON from a ``.keras`` file (a zip), read as JSON: no code runs."""
    if not path.is_file():
        raise ConfigError(f"Keras model file {path} not found; pass keras:PATH to an existing .keras file")
    try:
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read("config.json"))
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError, UnicodeDecodeError):
        raise ConfigError(
            f"{path} is not a Keras 3 .keras file (a zip with config.json); save it with model.save"
        ) from None


def _has_lambda(config) -> bool:
    if isinstance(config, dict):
        return config.get("class_name") == "Lambda" or any(_has_lambda(v) for v in config.values())
    if isinstance(config, list):
        return any(_has_lambda(v) for v in config)
    return False


def _check_code(config: dict, where: str, trust_code: bool) -> None:
    if _has_lambda(config) and not (trust_code or trusted()):
        raise ConfigError(
            f"{where} holds a Lambda layer, Python code that would run when it is loaded; "
            f"pass --trust-code (or set {TRUST_ENV}=1) only if you trust it"
        )


def _user_model(keras, name, num_classes, config=None, preprocess="scale", trust_code=False) -> KerasNet:
    if preprocess not in PREPROCESSING:
        raise ConfigError(f"unknown Keras preprocessing {preprocess!r}; choose one of {', '.join(PREPROCESSING)}")
    path = keras_path(name)
    if config is None:
        config = read_keras_config(path)
        _check_code(config, str(path), trust_code)
        model = _load_file(keras, path, trust_code)
        weights = model.get_weights()
    else:
        _check_code(config, f"the Keras config stored for {path.name}", trust_code)
        model, weights = _deserialize(keras, config, trust_code), None
    return _wrap_user_model(keras, model, config, weights, num_classes, preprocess, trust_code)


def _load_file(keras, path: Path, trust_code: bool):
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=not (trust_code or trusted()))
    except (ValueError, TypeError, OSError) as err:
        reason = first_line(err)
        raise ConfigError(f"could not load Keras model {path}: {reason}") from None


def _deserialize(keras, config: dict, trust_code: bool):
    config = copy.deepcopy(config)  # Keras pops keys out of the config it builds from
    return keras.saving.deserialize_keras_object(config, safe_mode=not (trust_code or trusted()))


def _wrap_user_model(keras, model, config, weights, num_classes, preprocess, trust_code) -> KerasNet:
    dense = model.layers[-1]
    if dense.__class__.__name__ != "Dense" or getattr(dense, "activation", None).__name__ not in ("softmax", "linear"):
        raise ConfigError(
            f"Keras model {model.name!r} must end in a Dense layer giving logits or softmax probabilities "
            f"(its last layer is {dense.__class__.__name__}); add one"
        )
    first = _channels_first(keras, model, config, weights, trust_code)
    source = first or model
    if weights is not None and first is None:
        source.set_weights(weights)
    last = source.layers[-1]
    body, taps = _with_taps(keras, source, last.input, channels_first=first is not None)
    net = KerasNet(body, taps, num_classes, preprocess, channels_first=first is not None)
    net.keras_units = last.units
    side = body.inputs[0].shape[2 if first is not None else 1]
    net.input_side = int(side or 32)
    if weights is not None and last.units == num_classes:
        with torch.no_grad():
            net.classifier.weight.copy_(last.kernel.value.detach().T)
            if last.use_bias:
                net.classifier.bias.copy_(last.bias.value.detach())
            else:
                net.classifier.bias.zero_()
    return net


def _channels_first(keras, model, config, weights, trust_code):
    """The model rebuilt in the channels_first format with the same weights, or None when it does not
    give the same outputs (a layer whose axes cannot be moved, such as a Reshape or a Dense on images)."""
    try:
        first = _deserialize(keras, to_channels_first(config), trust_code)
        if len(first.inputs) != 1 or len(first.inputs[0].shape) != 4:
            return None
        reference = weights if weights is not None else model.get_weights()
        model.set_weights(reference)
        first.set_weights(reference)
        shape = tuple(d or 32 for d in first.inputs[0].shape[1:])
        x = torch.rand((2, *shape), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            same = torch.allclose(first(x), model(x.permute(0, 2, 3, 1)), rtol=1e-4, atol=1e-5)
    except Exception:  # any layer that rejects the rewritten config: keep the original format
        return None
    return first if same else None


def to_channels_first(config):
    """A Keras model config with every data format channels_first, channel axes of BatchNormalization,
    Normalization and Concatenate moved to 1, and input shapes (N, H, W, C) as (N, C, H, W)."""
    if isinstance(config, list):
        return [to_channels_first(v) for v in config]
    if not isinstance(config, dict):
        return config
    out = {k: to_channels_first(v) for k, v in config.items()}
    if "data_format" in out:
        out["data_format"] = "channels_first"
    inner = out.get("config")
    if isinstance(inner, dict) and out.get("class_name") in ("BatchNormalization", "Normalization", "Concatenate"):
        if inner.get("axis") in (-1, 3, [-1], [3]):
            inner["axis"] = 1
    for key in ("batch_shape", "batch_input_shape", "input_shape"):
        shape = out.get(key)
        if isinstance(shape, list) and len(shape) == 4:
            out[key] = [shape[0], shape[3], shape[1], shape[2]]
    return out
