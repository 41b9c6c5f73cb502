"""``cifarlens export --format tflite|savedmodel``: a trained model -> TensorFlow, verified on real test images.

Route: the same ONNX graph ``cifarlens export`` writes (uint8 input, preprocessing inside), then
onnx2tf turns it into a TensorFlow graph in TensorFlow's NHWC layout, saved as a SavedModel and
converted to a float32 ``.tflite``. The result is run by TensorFlow (or the TFLite interpreter) on
the test images and must agree with PyTorch on the top-1 class for at least 99.9% of them, or
nothing is written. Needs the optional extra ``cifarlens[tf]``.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cifarlens.data.image_files import CIFAR_SIZE
from cifarlens.deploy.onnx_export import (
    DEFAULT_OPSET,
    MIN_AGREEMENT,
    EvalImages,
    VerificationError,
    compare,
    export_graph,
    input_contract,
    model_info,
)
from cifarlens.deploy.runtime import Classifier, TorchClassifier, load_torch, temperature_of
from cifarlens.deploy.tf_runtime import (
    SAVEDMODEL_FORMAT,
    TF_EXTRA,
    TFLITE_FORMAT,
    SavedModelClassifier,
    TfliteClassifier,
    import_tensorflow,
    is_saved_model,
    tf_sidecar_path,
)
from cifarlens.errors import ConfigError, first_line
from cifarlens.io import atomic_path
from cifarlens.run import ModelSpec, write_json
from cifarlens.run.directory import package_versions

TF_FORMATS = {"tflite": TFLITE_FORMAT, "savedmodel": SAVEDMODEL_FORMAT}
# onnx2tf can replace Erf (exact GELU) by builtin ops; left as Erf it needs TensorFlow's Flex delegate,
# which ai-edge-litert and plain mobile TFLite runtimes lack. The verification bounds the cost.
PSEUDO_OPS = ["erf"]  # lower case, as onnx2tf compares them


class ConversionError(VerificationError):
    """onnx2tf could not convert the graph; nothing is written."""


def import_onnx2tf():
    import_tensorflow()
    try:
        import onnx2tf
    except ImportError as err:
        raise ConfigError(f"TFLite/SavedModel export needs onnx2tf ({err.name} is missing); {TF_EXTRA}") from None
    return onnx2tf


def tf_input_contract(spec: ModelSpec, dynamic_batch: bool) -> dict[str, Any]:
    """The ONNX graph's contract, in the NHWC layout onnx2tf gives the TensorFlow model."""
    return input_contract(spec, dynamic_batch) | {
        "layout": "NHWC",
        "shape": ["batch" if dynamic_batch else 1, CIFAR_SIZE, CIFAR_SIZE, 3],
    }


def check_out(out: Path, fmt: str) -> None:
    if fmt == "tflite" and out.suffix != ".tflite":
        raise ConfigError(f"--out {out} must end in .tflite")
    if fmt == "savedmodel" and out.exists() and not is_saved_model(out):
        raise ConfigError(f"--out {out} exists and is not a SavedModel folder; choose a new folder name")


def convert(onnx_path: Path, folder: Path, source: str) -> None:
    """onnx2tf: ONNX -> SavedModel + float32/float16 .tflite in ``folder``; one line if it cannot."""
    onnx2tf = import_onnx2tf()
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            onnx2tf.convert(
                input_onnx_file_path=str(onnx_path),
                output_folder_path=str(folder),
                output_signaturedefs=True,
                copy_onnx_input_output_names_to_tflite=True,
                replace_to_pseudo_operators=PSEUDO_OPS,
                not_use_onnxsim=True,  # the dynamo exporter's graph is already folded; onnxsim is not in the extra
                non_verbose=True,
            )
    except (Exception, SystemExit) as err:  # onnx2tf raises many types and calls sys.exit on some failures
        reason = first_line(err)[:200]
        raise ConversionError(f"onnx2tf could not convert {source} ({reason}); nothing written") from None
    if not (folder / "model_float32.tflite").is_file() or not is_saved_model(folder):
        last = (log.getvalue().strip().splitlines() or ["no message"])[-1][:200]
        raise ConversionError(f"onnx2tf could not convert {source} ({last}); nothing written")


def open_converted(folder: Path, fmt: str, info: dict[str, Any]) -> Classifier:
    if fmt == "tflite":
        return TfliteClassifier(folder / "model_float32.tflite", info=info)
    return SavedModelClassifier(folder, info=info)


def place(folder: Path, fmt: str, out: Path) -> None:
    """Move the verified model from the work folder to ``out`` (same file system)."""
    if fmt == "tflite":
        with atomic_path(out) as tmp:
            shutil.copyfile(folder / "model_float32.tflite", tmp)
        return
    for extra in folder.glob("*.tflite"):
        extra.unlink()
    old = out.with_name(f".{out.name}.old")
    if out.exists():
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
    folder.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def versions() -> dict[str, str]:
    """The versions of the packages on the route that are installed."""
    found = package_versions(("torch", "onnx", "onnx2tf", "tensorflow", "ai-edge-litert"))
    return {name: version for name, version in found.items() if version is not None}


def export_tf_run(
    source: str | Path,
    data: EvalImages,
    *,
    out: Path,
    fmt: str,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
    min_agreement: float = MIN_AGREEMENT,
    batch_size: int = 256,
    trust_pickle: bool = False,
    model_name: str | None = None,
    model_args: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Export to ``fmt`` (tflite or savedmodel) at ``out``, verify, write the JSON next to it; returns that JSON.

    Raises ``VerificationError`` (nothing written) below ``min_agreement`` top-1 agreement with PyTorch.
    """

    if fmt not in TF_FORMATS:
        raise ConfigError(f"unknown --format {fmt!r}; choose onnx, tflite or savedmodel")
    check_out(out, fmt)
    import_onnx2tf()  # before the minutes of work below, not after
    model, spec = load_torch(source, trust_pickle=trust_pickle, model=model_name, model_args=model_args)
    temperature = temperature_of(source)
    reference = TorchClassifier(model, spec, str(source), temperature=temperature).logits(data.test_images, batch_size)
    # TorchClassifier made the weights channels-last; exported that way, flattening becomes an as_strided
    # gather over a Range of the batch size, which onnx2tf cannot convert.
    model.to(memory_format=torch.contiguous_format)
    info = base_info(source, spec, fmt, opset, dynamic_batch, temperature)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as work:
        work = Path(work)
        info["onnx_exporter"] = export_graph(
            model, spec, work / "model.onnx", opset=opset, dynamic_batch=dynamic_batch, temperature=temperature
        )
        convert(work / "model.onnx", work / "tf", str(source))
        logits = open_converted(work / "tf", fmt, info).logits(data.test_images, batch_size)
        info["verification"] = verify(str(source), fmt, reference, logits, data.test_labels, min_agreement)
        place(work / "tf", fmt, out)
        write_json(tf_sidecar_path(out), info)
    return info


def base_info(
    source: str | Path, spec: ModelSpec, fmt: str, opset: int, dynamic_batch: bool, temperature: float = 1.0
) -> dict[str, Any]:
    return {
        **model_info(TF_FORMATS[fmt], source, spec, tf_input_contract(spec, dynamic_batch), temperature),
        "route": "torch.onnx -> onnx2tf -> "
        + ("TFLite float32" if fmt == "tflite" else "SavedModel (serving_default)"),
        "opset": opset,
        "dynamic_batch": dynamic_batch,
        "pseudo_ops": PSEUDO_OPS,
        "versions": versions(),
    }


def verify(
    source: str, fmt: str, reference: np.ndarray, logits: np.ndarray, labels: np.ndarray, min_agreement: float
) -> dict[str, Any]:
    check = compare(reference, logits, labels) | {"against": "pytorch fp32", "min_agreement": min_agreement}
    if check["top1_agreement"] < min_agreement:
        raise VerificationError(
            f"{fmt} export of {source} agrees with PyTorch on only {check['top1_agreement']:.2%} of "
            f"{check['images']} test images (need {min_agreement:.1%}; max logit diff "
            f"{check['max_abs_logit_diff']:.3g}); nothing written. Export to ONNX instead"
        )
    return check
