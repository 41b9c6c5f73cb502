"""Running a TensorFlow export of ``cifarlens export --format tflite|savedmodel`` as a ``Classifier``.

The exported model takes uint8 RGB images laid out NHWC (N, 32, 32, 3), TensorFlow's layout,
and does its own scaling and normalisation; the classifiers here take the usual NCHW batches
and transpose them. The JSON next to the model (``model.tflite`` -> ``model.tflite.json``,
``saved_model/`` -> ``saved_model.json``) holds the classes and the verification numbers.
The TensorFlow packages come from the optional extra ``cifarlens[tf]``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from cifarlens.deploy.classifier import Classifier, read_export_json
from cifarlens.errors import ConfigError, RunDirError, first_line

TFLITE_FORMAT = "cifarlens-tflite"
SAVEDMODEL_FORMAT = "cifarlens-savedmodel"
TF_EXTRA = "pip install 'cifarlens[tf]'"


def tf_sidecar_path(path: str | Path) -> Path:
    """``model.tflite`` -> ``model.tflite.json``; ``saved_model`` (a folder) -> ``saved_model.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def is_saved_model(path: str | Path) -> bool:
    return (Path(path) / "saved_model.pb").is_file()


def import_tensorflow():
    """The ``tensorflow`` module, or one line naming the extra to install."""
    os.environ.setdefault(
        "TF_CPP_MIN_LOG_LEVEL", "3"
    )  # TensorFlow's C++ log lines on stderr, unless the user sets a level
    if "keras" not in sys.modules:  # importing TensorFlow imports Keras, which keras: runs need on torch
        os.environ["KERAS_BACKEND"] = "torch"
    try:
        import tensorflow as tf
    except ImportError:
        raise ConfigError(f"TensorFlow is not installed; {TF_EXTRA}") from None
    return tf


def litert_interpreter_class():
    """The TFLite interpreter class: ai-edge-litert's, else the one inside TensorFlow."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            Interpreter = import_tensorflow().lite.Interpreter
        except ConfigError:
            raise ConfigError(f"reading a .tflite file needs ai-edge-litert or TensorFlow; {TF_EXTRA}") from None
    return Interpreter


def read_tf_sidecar(path: Path, fmt: str) -> dict[str, Any]:
    return read_export_json(
        path,
        tf_sidecar_path(path),
        fmt,
        made_by="cifarlens export --format tflite/savedmodel",
        missing=f"{path} not found; create it with cifarlens export RUN --format tflite (or savedmodel)",
    )


def nhwc(images: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(images.transpose(0, 2, 3, 1))


class TfliteClassifier(Classifier):
    """An exported ``.tflite`` file (uint8 NHWC input, preprocessing inside) run by the TFLite interpreter."""

    def __init__(self, path: str | Path, threads: int | None = None, info: dict[str, Any] | None = None):
        path = Path(path)
        self.info = info if info is not None else read_tf_sidecar(path, TFLITE_FORMAT)
        self.classes = tuple(self.info["classes"])
        self.source = str(path)
        self.backend = "tflite"
        interpreter_class = litert_interpreter_class()
        try:
            self.interpreter = interpreter_class(model_path=str(path), num_threads=threads or None)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as err:
            first = first_line(err)
            raise RunDirError(f"{path} is not a loadable TFLite model ({first}); export it again") from None
        self.input = self.interpreter.get_input_details()[0]
        self.output_index = self.interpreter.get_output_details()[0]["index"]
        batch = int(self.input["shape_signature"][0])
        self.fixed_batch = None if batch == -1 else batch
        self.batch = int(self.input["shape"][0])

    def run(self, images: np.ndarray) -> np.ndarray:
        x = nhwc(images)
        if self.batch != len(x):
            self.interpreter.resize_tensor_input(self.input["index"], list(x.shape))
            self.interpreter.allocate_tensors()
            self.batch = len(x)
        self.interpreter.set_tensor(self.input["index"], x)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output_index).copy()


class SavedModelClassifier(Classifier):
    """An exported SavedModel folder (its ``serving_default`` signature) run by TensorFlow."""

    def __init__(self, path: str | Path, info: dict[str, Any] | None = None):
        path = Path(path)
        self.info = info if info is not None else read_tf_sidecar(path, SAVEDMODEL_FORMAT)
        self.classes = tuple(self.info["classes"])
        self.source = str(path)
        self.backend = "tensorflow"
        tf = import_tensorflow()
        try:
            self.model = tf.saved_model.load(str(path))
            self.function = self.model.signatures["serving_default"]
        except (OSError, ValueError, KeyError) as err:
            first = first_line(err)
            raise RunDirError(f"{path} is not a loadable SavedModel ({first}); export it again") from None
        self.input_name, spec = next(iter(self.function.structured_input_signature[1].items()))
        self.fixed_batch = spec.shape[0]  # None: any batch
        self.tf = tf

    def run(self, images: np.ndarray) -> np.ndarray:
        outputs = self.function(**{self.input_name: self.tf.constant(nhwc(images))})
        return next(iter(outputs.values())).numpy()
