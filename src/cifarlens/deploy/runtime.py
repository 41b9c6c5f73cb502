"""A classifier from any file a user may hand us, with one interface whatever runs it.

Accepted sources:

* a run directory (``RUN/model.safetensors``) or a cifarlens ``.safetensors`` file: PyTorch;
* an ``.onnx`` file exported by ``cifarlens export``, read with the JSON written next to it
  (``model.onnx`` -> ``model.json``: classes, input layout, preprocessing): onnxruntime;
* a pickled ``.pt/.pth/.pkl`` state dict only with ``trust_pickle=True`` plus the model name,
  and even then through ``torch.load(weights_only=True)``.

Every classifier takes what ``cifarlens.data.image_files`` produces, uint8 RGB (N, 3, 32, 32), and
returns float32 logits (N, C); scaling, normalisation and any resize to the model's
``image_size`` happen inside (``Preprocessed``), so a consumer cannot get them wrong.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cifarlens.data import CIFAR10_MEAN, CIFAR10_STD, CLASSES, model_input

# Classifier, ONNX_FORMAT and sidecar_path are also imported from here.
from cifarlens.deploy.classifier import ONNX_FORMAT, Classifier, read_sidecar, sidecar_path  # noqa: F401
from cifarlens.deploy.openvino_runtime import OpenVinoClassifier, precision_of
from cifarlens.deploy.tf_runtime import SavedModelClassifier, TfliteClassifier, is_saved_model  # TF loads on use
from cifarlens.errors import CifarlensError, ConfigError, RunDirError, first_line
from cifarlens.models.state_dicts import fit_state_dict, read_weights_file
from cifarlens.run import ModelSpec, RunDir, load_weights
from cifarlens.run.predictor import Predictor

# Every inference backend, by the name bench, predict and serve take (--backend). The onnxruntime and openvino
# ones run the graphs of ``cifarlens export`` (``-int8``: its ``--quantize int8`` graph); openvino is optional.
TORCH_BACKENDS = ("torch", "torch-compile", "torch-bf16")
BACKENDS = TORCH_BACKENDS + ("onnxruntime", "onnxruntime-int8", "openvino", "openvino-bf16", "openvino-int8")
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin")


class Preprocessed(nn.Module):
    """``model`` behind its input pipeline: uint8 RGB (N, 3, H, W) -> logits (N, C).

    ``x / 255``, per-channel ``(x - mean) / std``, then a bilinear resize to ``image_size`` when
    the model was trained larger than the 32x32 CIFAR images (as training resized them). The logits are divided
    by ``temperature`` (``cifarlens calibrate``'s), so that their softmax is the calibrated probability.
    """

    def __init__(
        self,
        model: nn.Module,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        image_size: int = 32,
        temperature: float = 1.0,
    ):
        super().__init__()
        self.model = model
        self.mean, self.std, self.image_size = tuple(mean), tuple(std), image_size
        self.temperature = float(temperature)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.model(model_input(images, self.mean, self.std, self.image_size))  # the training pipeline's own
        return logits if self.temperature == 1.0 else logits / self.temperature


class TorchClassifier(Classifier):
    """A PyTorch model (eval mode, channels-last, fp32; on the CPU unless ``device`` says otherwise) scored
    through the ``Predictor``."""

    def __init__(
        self,
        model: nn.Module,
        spec: ModelSpec,
        source: str,
        compile: bool = False,
        device: str = "cpu",
        precision: str = "fp32",
        temperature: float = 1.0,
    ):
        self.spec = spec
        self.classes = tuple(spec.classes)
        self.backend = "torch-compile" if compile else ("torch-bf16" if precision == "bf16" else "torch")
        self.source = source
        self.temperature = float(temperature)
        self.info = {
            "model": spec.name,
            "model_args": spec.kwargs,
            "image_size": spec.image_size,
            "temperature": self.temperature,
        }
        self.predictor = Predictor(
            model.eval().to(memory_format=torch.channels_last),
            spec,
            compile=compile,
            device=device,
            precision=precision,
        )
        self.runs_on = str(self.predictor.device)

    def run(self, images: np.ndarray) -> np.ndarray:
        self.predictor.batch_size = max(len(images), 1)  # Classifier.logits has batched already
        logits = self.predictor.logits(torch.from_numpy(images))
        return (logits if self.temperature == 1.0 else logits / self.temperature).numpy()


class OnnxClassifier(Classifier):
    """An exported ONNX graph (uint8 input, preprocessing inside) run by onnxruntime on the CPU, or with
    ``device="cuda"`` through its CUDA provider when this onnxruntime build has one (``runs_on`` says which ran)."""

    def __init__(self, path: str | Path, threads: int | None = None, device: str = "cpu", optimization: str = "all"):
        """``optimization``: onnxruntime's graph optimisation level, disable/basic/extended/all (its default)."""
        import onnxruntime as ort

        path = Path(path)
        self.info = read_sidecar(path)
        self.classes = tuple(self.info["classes"])
        self.source = str(path)
        self.backend = "onnxruntime-int8" if self.info.get("quantization") else "onnxruntime"
        options = ort.SessionOptions()
        level = ort.GraphOptimizationLevel
        levels = {
            "disable": level.ORT_DISABLE_ALL,
            "basic": level.ORT_ENABLE_BASIC,
            "extended": level.ORT_ENABLE_EXTENDED,
            "all": level.ORT_ENABLE_ALL,
        }
        options.graph_optimization_level = levels[optimization]
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        if device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as err:  # onnxruntime raises its own exception types for unreadable graphs
            raise RunDirError(f"{path} is not a loadable ONNX model ({first_line(err)}); export it again") from None
        self.runs_on = self.session.get_providers()[0]
        if self.runs_on == "CUDAExecutionProvider":
            self.backend += "-cuda"
        node = self.session.get_inputs()[0]
        self.input_name = node.name
        batch = node.shape[0]
        self.fixed_batch = batch if isinstance(batch, int) else None

    def run(self, images: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: images})[0]


def int8_path(onnx_path: str | Path) -> Path:
    """Where the int8 graph quantized from an fp32 one goes: ``model.onnx`` -> ``model.int8.onnx``."""
    onnx_path = Path(onnx_path)
    return onnx_path.with_name(onnx_path.stem + ".int8.onnx")


def load_torch(
    source: str | Path,
    *,
    trust_pickle: bool = False,
    model: str | None = None,
    model_args: dict[str, Any] | None = None,
) -> tuple[nn.Module, ModelSpec]:
    """The PyTorch model and spec of a run directory, a cifarlens .safetensors or (trusted) pickle file."""
    path = Path(source)
    if path.is_dir():
        return RunDir(path).load_model()
    if path.suffix == ".safetensors":
        return load_weights(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return _load_pickle(path, trust_pickle, model, model_args or {})
    if not path.exists():
        raise RunDirError(f"{path} not found; pass a run directory, a .safetensors or an exported .onnx file")
    raise RunDirError(f"{path}: unknown model file type {path.suffix!r}; pass a run directory, .safetensors or .onnx")


def _load_pickle(path: Path, trust: bool, model: str | None, model_args: dict[str, Any]):
    if not trust:
        raise RunDirError(
            f"{path} is a pickle file, and loading a pickle can run arbitrary code; cifarlens reads safetensors "
            "weights (RUN/model.safetensors). If you trust the file, add --trust-pickle --model NAME "
            "(it is then read with torch.load(weights_only=True))"
        )
    if not model:
        raise CifarlensError(f"{path} holds bare weights without a model name; add --model NAME (see cifarlens models)")
    if not path.is_file():
        raise RunDirError(f"{path} not found")

    spec = ModelSpec(model, model_args, len(CLASSES), CLASSES, CIFAR10_MEAN, CIFAR10_STD)
    net = spec.build()
    net.load_state_dict(fit_state_dict(read_weights_file(path), net, path))
    return net.eval(), spec


def default_onnx_path(source: str | Path) -> Path:
    """Where ``cifarlens export`` writes the fp32 graph: RUN/export/model.onnx, or next to a weights file."""
    source = Path(source)
    return RunDir(source).onnx_file if source.is_dir() else source.with_suffix(".onnx")


def exported_graph(source: str | Path, backend: str) -> Path:
    """The graph an ONNX or OpenVINO ``backend`` runs for the weights ``source``: ``default_onnx_path``, or the
    int8 graph beside it for an ``-int8`` backend."""
    graph = default_onnx_path(source)
    return int8_path(graph) if backend.endswith("-int8") else graph


def temperature_of(source: str | Path) -> float:
    """The temperature ``cifarlens calibrate`` stored for the run of ``source`` (the run, or its weights file);
    1.0 for a file outside a run or a run never calibrated."""
    path = Path(source)
    run = RunDir(path if path.is_dir() else path.parent)
    return run.temperature if path.is_dir() or path.name == run.WEIGHTS else 1.0


def torch_backend(model: nn.Module, spec: ModelSpec, source: str | Path, backend: str, device: str = "cpu"):
    """``model`` as the PyTorch ``backend`` (one of ``TORCH_BACKENDS``) runs it, its logits divided by the run's
    temperature."""
    precision = "bf16" if backend == "torch-bf16" else "fp32"
    return TorchClassifier(
        model,
        spec,
        str(source),
        compile=backend == "torch-compile",
        device=device,
        precision=precision,
        temperature=temperature_of(source),
    )


def check_graph_temperature(graph: Path, source: Path) -> None:
    """An exported graph of a run holds the temperature the run had then; refuse one that predates calibrate."""
    inside, now = float(read_sidecar(graph).get("temperature", 1.0)), temperature_of(source)
    if abs(inside - now) > 1e-9:
        raise RunDirError(
            f"{graph} divides its logits by temperature {inside:g}, but {source} is now calibrated to {now:g}; "
            f"export it again: cifarlens export {source}"
        )


def graph_backend(path: Path, backend: str, threads: int | None = None, device: str = "cpu") -> Classifier:
    """The exported ONNX graph ``path`` run by ``backend`` (``onnxruntime*`` or ``openvino*``)."""
    if backend.startswith("openvino"):
        return OpenVinoClassifier(path, precision=precision_of(backend), threads=threads)
    return OnnxClassifier(path, threads=threads, device=device)


def open_classifier(
    source: str | Path,
    *,
    backend: str = "auto",
    trust_pickle: bool = False,
    model: str | None = None,
    model_args: dict[str, Any] | None = None,
    threads: int | None = None,
) -> Classifier:
    """A ``Classifier`` for a run directory, .safetensors, exported .onnx / .tflite / SavedModel or (trusted) pickle.

    ``backend`` (one of ``BACKENDS``; ``auto``: PyTorch for weights, onnxruntime for a graph) picks what runs it.
    For weights, an ONNX backend runs the graph ``cifarlens export`` wrote for them (``default_onnx_path``).
    """
    path = Path(source)
    if backend != "auto" and backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose auto or one of {', '.join(BACKENDS)}")
    if threads is not None and threads < 0:
        raise ConfigError(f"--threads must be 0 (the backend's default) or more, got {threads}")
    if path.suffix.lower() == ".onnx":
        if backend in TORCH_BACKENDS:
            raise ConfigError(f"{path} is an ONNX graph; use --backend onnxruntime or openvino, or pass the run")
        if backend.endswith("-int8") and not read_sidecar(path).get("quantization"):
            raise ConfigError(f"{path} is the fp32 graph; pass the int8 one ({int8_path(path).name}) for {backend}")
        return graph_backend(path, backend, threads)
    tensorflow = path.suffix.lower() == ".tflite" or is_saved_model(path)
    if tensorflow and backend != "auto":
        raise ConfigError(f"{path} runs only in TensorFlow; drop --backend {backend}")
    if backend.startswith(("onnxruntime", "openvino")):
        graph = exported_graph(path, backend)
        if not graph.is_file():
            quantize = " --quantize int8" if backend.endswith("-int8") else ""
            raise RunDirError(
                f"{backend} runs the exported graph {graph}, which is not there; "
                f"create it with cifarlens export {path}{quantize}"
            )
        check_graph_temperature(graph, path)
        return graph_backend(graph, backend, threads)
    if path.suffix.lower() == ".tflite":
        return TfliteClassifier(path, threads=threads)
    if tensorflow:
        return SavedModelClassifier(path)
    net, spec = load_torch(path, trust_pickle=trust_pickle, model=model, model_args=model_args)
    if threads:
        torch.set_num_threads(threads)
    return torch_backend(net, spec, path, "torch" if backend == "auto" else backend)
