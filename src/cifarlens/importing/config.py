"""``ImportConfig``: the options of ``cifarlens import`` (each field's comment is its ``--help`` text)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from cifarlens.data.augment import CIFAR10_MEAN, CIFAR10_STD
from cifarlens.errors import ConfigError


@dataclass
class ImportConfig:
    source: str = ""  # file.py:factory, package.module:factory, model.pt (TorchScript), model.pt2, timm:NAME or a model
    out: str = ""  # the run folder to write; it must not exist yet
    # the state dict: .safetensors, or .pt/.pth read with weights_only=True (nested checkpoint dicts and module./
    # _orig_mod. prefixes are found); TorchScript and .pt2 files hold their own
    weights: str = ""
    model_args: dict = field(default_factory=dict)  # keyword arguments of the factory, as YAML: '{depth: 18}'
    mean: str = ""  # R,G,B mean the model's inputs were normalised with, on a 0-1 scale (default: CIFAR-10's)
    std: str = ""  # R,G,B standard deviation of that normalisation (default: CIFAR-10's)
    scale: str = ""  # 0-1: the model takes x / 255, not normalised (the same as --mean 0,0,0 --std 1,1,1)
    bgr: bool = False  # the model takes its channels in BGR order (OpenCV, Caffe)
    classes: str = ""  # class names in the model's output order, comma-separated (default: CIFAR-10's)
    image_size: int = 32  # side the model is fed at, for models made for larger images (CIFAR images are resized)
    # logits, probabilities (turned into log-probabilities), or auto: probabilities when every output row sums to 1
    output: Literal["auto", "logits", "probabilities"] = "auto"
    # an .onnx SOURCE's input: float32 (normalised NCHW, --mean/--std) or uint8 (0-255 NCHW, normalised inside
    # the graph, as cifarlens export writes it)
    onnx_input: Literal["float32", "uint8"] = "float32"
    classifier: str = ""  # the classifier module (default: the last nn.Linear)
    cam_layer: str = ""  # the default CAM layer (default: the deepest module with an output at least 7x7)
    trust_code: bool = False  # allow running the code of a .py SOURCE (and only a file you trust)
    check: bool = True  # score the test split and diagnose the input convention below 30% (--no-check: untrained)
    data_dir: str = ""  # folder holding cifar-10-batches-py (default: $CIFARLENS_DATA_DIR, then the cache dir)
    device: str = "cpu"  # where the import's checks run: auto, cpu, cuda or mps

    def validate(self) -> None:
        if not self.source:
            raise ConfigError("name the model to import: cifarlens import SOURCE --out RUN")
        if not self.out:
            raise ConfigError("pass --out RUN, the folder the imported run is written to")
        if self.scale and self.scale != "0-1":
            raise ConfigError(f"--scale {self.scale!r} is not known; --scale 0-1 means x / 255 without normalisation")
        if self.onnx_input == "uint8" and (self.scale or self.mean or self.std or not self.source.endswith(".onnx")):
            raise ConfigError("--onnx-input uint8 is for an .onnx graph that normalises inside; drop the other flags")
        if self.scale and (self.mean or self.std):
            raise ConfigError("--scale 0-1 sets the normalisation; drop --mean/--std, or drop --scale")
        self.normalization()  # parse errors now, before any work
        if self.image_size < 8:
            raise ConfigError(f"--image-size {self.image_size} is too small; CIFAR images are 32x32")

    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) on a 0-1 scale, from --scale or --mean/--std (CIFAR-10's by default); the identity on
        0-255 for a uint8 ONNX graph."""
        if self.onnx_input == "uint8":
            return (0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255)
        if self.scale == "0-1":
            return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        mean = _triple(self.mean, "--mean") if self.mean else CIFAR10_MEAN
        std = _triple(self.std, "--std") if self.std else CIFAR10_STD
        if any(s <= 0 for s in std):
            raise ConfigError(f"--std {self.std} must be positive")
        return mean, std

    def class_names(self) -> tuple[str, ...] | None:
        """--classes as a tuple, None when not given."""
        names = tuple(n.strip() for n in self.classes.split(",") if n.strip()) if self.classes else ()
        if self.classes and len(set(names)) != len(names):
            raise ConfigError(f"--classes {self.classes!r} names a class twice")
        return names or None


def _triple(text: str, flag: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise ConfigError(f"{flag} {text!r} must be three numbers R,G,B on a 0-1 scale, e.g. 0.4914,0.4822,0.4465")
    if any(v > 2 for v in values) and flag == "--mean":
        raise ConfigError(f"{flag} {text} looks like a 0-255 scale; divide by 255 (e.g. 0.4914,0.4822,0.4465)")
    return values  # type: ignore[return-value]
