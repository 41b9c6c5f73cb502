"""``cifarlens export``: a trained model -> an ONNX graph verified with onnxruntime on real test images.

The graph takes uint8 RGB (N, 3, 32, 32), layout NCHW, and does its own scaling and
normalisation (``Preprocessed``); ``model.json`` next to it records the classes, the input
contract, the exporter used and the verification numbers. The file only appears when the
verification passes: fp32 must agree with PyTorch on the top-1 class for at least 99.9% of the
test images; an int8 graph (``quantize.py``) may lose at most 0.5 accuracy points against fp32.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cifarlens import __version__
from cifarlens.data import prepare_data, stratified_indices
from cifarlens.data.image_files import CIFAR_SIZE
from cifarlens.deploy.quantize import quantize_int8
from cifarlens.deploy.runtime import (
    ONNX_FORMAT,
    OnnxClassifier,
    Preprocessed,
    TorchClassifier,
    int8_path,
    load_torch,
    sidecar_path,
    temperature_of,
)
from cifarlens.errors import CifarlensError, ConfigError, first_line
from cifarlens.io import atomic_path
from cifarlens.models.layers import takes_hooks
from cifarlens.run import ModelSpec, RunDir, write_json

MIN_AGREEMENT = 0.999  # fp32 ONNX vs PyTorch, top-1
MAX_INT8_DROP = 0.5  # accuracy points, int8 vs fp32 ONNX
DEFAULT_OPSET = 18
INPUT, OUTPUT = "images", "logits"


class VerificationError(CifarlensError):
    """The exported graph does not reproduce the model closely enough; it is not written."""


@dataclass
class EvalImages:
    """Images the export is checked on (test) and int8 is calibrated on (train): uint8 (N, 3, 32, 32)."""

    test_images: np.ndarray
    test_labels: np.ndarray
    calibration: np.ndarray


def input_contract(spec: ModelSpec, dynamic_batch: bool) -> dict[str, Any]:
    """The JSON a consumer needs to feed the graph right."""
    return {
        "name": INPUT,
        "dtype": "uint8",
        "layout": "NCHW",
        "channels": "RGB",
        "shape": ["batch" if dynamic_batch else 1, 3, CIFAR_SIZE, CIFAR_SIZE],
        "range": [0, 255],
        "in_graph": "x/255, (x - mean)/std per channel"
        + (f", bilinear resize to {spec.image_size}x{spec.image_size}" if spec.image_size != CIFAR_SIZE else ""),
        "file_to_input": "EXIF transpose, RGB (alpha on white), centre square crop, BOX resize to 32x32",
    }


def export_graph(
    model: nn.Module,
    spec: ModelSpec,
    out: Path,
    *,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
    temperature: float = 1.0,
) -> str:
    """Write the ONNX graph of ``model`` behind its preprocessing to ``out``; returns the exporter used.

    The dynamo exporter (torch.export + onnxscript) is tried first; if it fails, the TorchScript
    exporter is used with a warning. ``temperature`` (the run's, from ``cifarlens calibrate``) divides the logits
    inside the graph.
    """
    if not takes_hooks(model):
        raise ConfigError(
            "a TorchScript model or an ONNX graph cannot be exported here (neither ONNX exporter traces through a "
            "loaded ScriptModule; an ONNX graph is one already): import the model as a torch.export .pt2 or from "
            "its Python code to export it"
        )
    wrapper = Preprocessed(model.eval(), spec.mean, spec.std, spec.image_size, temperature).eval()
    # Batch 2, not 1: torch.export specialises a dimension of size 1 and the batch would not stay dynamic.
    example = torch.zeros(2 if dynamic_batch else 1, 3, CIFAR_SIZE, CIFAR_SIZE, dtype=torch.uint8)
    common = dict(input_names=[INPUT], output_names=[OUTPUT], opset_version=opset)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's progress lines and deprecation chatter
            dynamic = {INPUT: {0: torch.export.Dim("batch", min=1, max=65536)}} if dynamic_batch else None
            program = torch.onnx.export(wrapper, (example,), dynamo=True, dynamic_shapes=dynamic, **common)
            program.save(str(out), external_data=False)
        return "dynamo"
    except Exception as err:  # any failure of torch.export / onnxscript: fall back to the older exporter
        reason = first_line(err)[:200]
        warnings.warn(f"dynamo ONNX exporter failed ({reason}); using the TorchScript exporter", stacklevel=2)
    axes = {INPUT: {0: "batch"}, OUTPUT: {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, (example,), str(out), dynamo=False, dynamic_axes=axes, **common)
    return "torchscript"


def compare(reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Logit difference, top-1 agreement and both accuracies (in %) of two (N, C) logit arrays."""
    ref_top, cand_top = reference.argmax(1), candidate.argmax(1)
    return {
        "images": len(labels),
        "max_abs_logit_diff": float(np.abs(reference - candidate).max(initial=0.0)),
        "top1_agreement": float((ref_top == cand_top).mean()) if len(labels) else 1.0,
        "reference_accuracy": float((ref_top == labels).mean() * 100) if len(labels) else 0.0,
        "accuracy": float((cand_top == labels).mean() * 100) if len(labels) else 0.0,
    }


def model_info(
    fmt: str, source: str | Path, spec: ModelSpec, inputs: dict[str, Any], temperature: float = 1.0
) -> dict[str, Any]:
    """What the sidecar JSON of any exported model starts with: format, model, classes, normalisation, I/O."""
    meaning = "logits (softmax for probabilities)"
    if temperature != 1.0:
        meaning = (
            f"logits divided by the temperature {temperature:g} of cifarlens calibrate (softmax for probabilities)"
        )
    return {
        "format": fmt,
        "cifarlens_version": __version__,
        "source": str(source),
        "model": spec.name,
        "model_args": spec.kwargs,
        "classes": list(spec.classes),
        "mean": list(spec.mean),
        "std": list(spec.std),
        "image_size": spec.image_size,
        "temperature": temperature,
        "input": inputs,
        "output": {
            "name": OUTPUT,
            "meaning": meaning,
            "shape": ["batch", spec.num_classes],
        },
    }


def export_run(
    source: str | Path,
    data: EvalImages,
    *,
    out: Path,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
    quantize: str = "none",
    min_agreement: float = MIN_AGREEMENT,
    max_int8_drop: float = MAX_INT8_DROP,
    batch_size: int = 256,
    trust_pickle: bool = False,
    model_name: str | None = None,
    model_args: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Export, verify and (optionally) quantise; returns {"fp32": info, "int8": info or None}.

    ``out`` is the fp32 graph; the int8 one goes to ``<stem>.int8.onnx``. Each info dict is also
    written as the JSON next to its graph. Raises ``VerificationError`` below the thresholds.
    """

    if quantize not in ("none", "int8"):
        raise ConfigError(f"unknown --quantize {quantize!r}; choose none or int8")
    if out.suffix != ".onnx":
        raise ConfigError(f"--out {out} must end in .onnx")
    if not 14 <= opset <= 23:
        raise ConfigError(f"--opset {opset} is not supported; choose 14 to 23 (default {DEFAULT_OPSET})")
    model, spec = load_torch(source, trust_pickle=trust_pickle, model=model_name, model_args=model_args)
    temperature = temperature_of(source)
    reference = TorchClassifier(model, spec, str(source), temperature=temperature).logits(data.test_images, batch_size)
    base = {
        **model_info(ONNX_FORMAT, source, spec, input_contract(spec, dynamic_batch), temperature),
        "opset": opset,
        "dynamic_batch": dynamic_batch,
        "torch_version": torch.__version__,
    }
    result: dict[str, Any] = {"fp32": None, "int8": None}
    with atomic_path(out) as tmp:
        exporter = export_graph(model, spec, tmp, opset=opset, dynamic_batch=dynamic_batch, temperature=temperature)
        fp32_logits, check = _check_graph(tmp, base, data, reference, batch_size)
        check |= {"against": "pytorch fp32", "min_agreement": min_agreement}
        if check["top1_agreement"] < min_agreement:
            raise VerificationError(
                f"ONNX export of {source} agrees with PyTorch on only {check['top1_agreement']:.2%} of "
                f"{check['images']} test images (need {min_agreement:.1%}; max logit diff "
                f"{check['max_abs_logit_diff']:.3g}); nothing written. Try another --opset"
            )
        info = base | {"exporter": exporter, "quantization": None, "verification": check}
        write_json(sidecar_path(out), info)
    result["fp32"] = info
    if quantize == "int8":
        int8_out = int8_path(out)
        with atomic_path(int8_out) as tmp:
            details = quantize_int8(out, tmp, data.calibration, fixed_batch=None if dynamic_batch else 1)
            _, check = _check_graph(tmp, base, data, fp32_logits, batch_size)
            drop = check["reference_accuracy"] - check["accuracy"]
            check |= {"against": "onnx fp32", "accuracy_drop_points": drop, "max_accuracy_drop_points": max_int8_drop}
            if drop > max_int8_drop:
                raise VerificationError(
                    f"int8 quantisation costs {drop:.2f} accuracy points on {check['images']} test images "
                    f"({check['reference_accuracy']:.2f}% -> {check['accuracy']:.2f}%; limit {max_int8_drop}); "
                    f"int8 graph not written, fp32 kept at {out}. Try more --calibration-images"
                )
            int8_info = base | {"exporter": exporter, "quantization": details, "verification": check}
            write_json(sidecar_path(int8_out), int8_info)
        result["int8"] = int8_info
    return result


def _check_graph(
    path: Path, info: dict[str, Any], data: EvalImages, reference: np.ndarray, batch_size: int
) -> tuple[np.ndarray, dict[str, float]]:
    """Logits of the graph at ``path`` (not yet in place) on the test images, compared with ``reference``."""

    side = sidecar_path(path)
    write_json(side, info)  # the temporary graph has no sidecar yet: one just for this session
    try:
        session = OnnxClassifier(path)
    finally:
        side.unlink(missing_ok=True)
    logits = session.logits(data.test_images, batch_size)
    return logits, compare(reference, logits, data.test_labels)


def load_eval_images(
    source: str | Path,
    data_dir: str | Path | None = None,
    *,
    test_images: int = 0,
    calibration_images: int = 512,
    seed: int = 0,
) -> EvalImages:
    """Test images (stratified ``test_images`` of them, 0: all) and training images for calibration.

    A run directory gives the splits it was trained with (its config.yaml); other sources the
    CIFAR-10 found by ``data_dir`` / ``CIFARLENS_DATA_DIR``.
    """

    if test_images < 0 or calibration_images < 0:
        raise ConfigError("--test-images and --calibration-images must be 0 or more")
    path = Path(source)
    data = RunDir(path).require_weights().load_data(data_dir) if path.is_dir() else prepare_data(data_dir)
    test = data.test
    if test_images and test_images < len(test):
        test = test.take(stratified_indices(test.labels, test_images, seed))
    n_cal = min(calibration_images, len(data.train))
    calib = (
        data.train.take(stratified_indices(data.train.labels, n_cal, seed))
        if n_cal
        else data.train.take(torch.arange(0))
    )
    return EvalImages(test.images.numpy(), test.labels.numpy(), calib.images.numpy())
