"""OpenVINO as an inference backend for the graphs of ``cifarlens export`` (``pip install 'cifarlens[openvino]'``).

OpenVINO reads the exported ``.onnx`` directly (preprocessing inside, uint8 NCHW in, logits out) and
runs it on the CPU (x86 of any vendor). Three ways to run a graph, as ``bench``, ``predict`` and ``serve``
name them:

* ``openvino``: the fp32 graph in fp32 (``INFERENCE_PRECISION_HINT=f32``): the same numbers as PyTorch;
* ``openvino-bf16``: the fp32 graph in bf16, OpenVINO's own default on a CPU with native bf16;
* ``openvino-int8``: the QDQ int8 graph of ``cifarlens export --quantize int8``, which OpenVINO runs
  with int8 kernels; the layers the quantiser left in floating point run in bf16 where the CPU has it
  natively (OpenVINO's own default there), in fp32 elsewhere.

A graph is compiled once per input shape (batch size) and kept: a static shape lets OpenVINO pick its
fastest kernels, and bench and serve reuse a few batch sizes. Speeds: BENCHMARKS.md, "CPU inference backends".
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from cifarlens.deploy.classifier import Classifier, read_sidecar
from cifarlens.device import cpu_has_fast_bf16
from cifarlens.errors import ConfigError, RunDirError, first_line

PRECISIONS = {"fp32": "f32", "bf16": "bf16"}
COMPILED_SHAPES = 8  # compiled batch sizes kept per classifier


def precision_of(backend: str) -> str:
    """The floating-point precision an OpenVINO backend runs in (``openvino-int8``: for its non-int8 layers)."""

    if backend == "openvino-bf16" or (backend == "openvino-int8" and cpu_has_fast_bf16()):
        return "bf16"
    return "fp32"


def import_openvino():
    try:
        import openvino
    except ImportError:
        raise ConfigError("the OpenVINO backends need openvino; pip install 'cifarlens[openvino]'") from None
    return openvino


class OpenVinoClassifier(Classifier):
    """An exported ONNX graph run by OpenVINO on the CPU in ``precision`` (fp32 or bf16; an int8 graph runs
    in int8 whatever it says for the layers left in floating point). ``threads``: 0 or None for OpenVINO's default."""

    def __init__(self, path: str | Path, *, precision: str = "fp32", threads: int | None = None):
        if precision not in PRECISIONS:
            raise ConfigError(f"unknown OpenVINO precision {precision!r}; choose {' or '.join(PRECISIONS)}")
        ov = import_openvino()
        path = Path(path)
        self.info = read_sidecar(path)
        self.classes = tuple(self.info["classes"])
        self.source = str(path)
        self.precision = precision
        int8 = bool(self.info.get("quantization"))
        self.backend = "openvino-int8" if int8 else ("openvino-bf16" if precision == "bf16" else "openvino")
        self.core = ov.Core()
        self.runs_on = "OpenVINO CPU plugin"
        try:
            self.model = self.core.read_model(str(path))
        except Exception as err:  # OpenVINO raises its own RuntimeError subclasses for unreadable graphs
            raise RunDirError(
                f"{path} is not a loadable ONNX model for OpenVINO ({first_line(err)}); export it again"
            ) from None
        self.config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": PRECISIONS[precision], "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            self.config["INFERENCE_NUM_THREADS"] = threads
        batch = self.model.inputs[0].get_partial_shape()[0]
        self.fixed_batch = batch.get_length() if batch.is_static else None
        self._requests: OrderedDict[tuple[int, ...], Any] = OrderedDict()

    def _request(self, shape: tuple[int, ...]):
        """An infer request of the graph compiled for ``shape``, compiled on first use."""
        if shape in self._requests:
            self._requests.move_to_end(shape)
            return self._requests[shape]
        model = self.model.clone()
        model.reshape({model.inputs[0].get_any_name(): list(shape)})
        request = self.core.compile_model(model, "CPU", self.config).create_infer_request()
        self._requests[shape] = request
        if len(self._requests) > COMPILED_SHAPES:
            self._requests.popitem(last=False)
        return request

    def run(self, images: np.ndarray) -> np.ndarray:
        request = self._request(tuple(images.shape))
        return np.array(request.infer({0: images})[0], dtype=np.float32, copy=True)  # the request reuses its buffer
