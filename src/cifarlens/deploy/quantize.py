"""Static int8 quantisation of an exported graph with ``onnxruntime.quantization``.

QDQ format, per-channel int8 weights and uint8 activations (U8S8): onnxruntime's fastest x86
kernels (MLAS); U8S8 against S8S8 QDQ on airnet: BENCHMARKS.md, "Inference backends". Without VNNI,
U8S8 may saturate in the 16-bit intermediate sums; the accuracy check after quantisation would
catch that loss.
Activation ranges come from MinMax calibration on training images (never test images);
``quant_pre_process`` first folds BatchNorm into the convs and infers shapes, so the scales are
those of the layers that actually run.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from cifarlens.errors import ConfigError

CALIBRATION_BATCH = 32


def quantize_int8(
    fp32: Path,
    out: Path,
    calibration: np.ndarray,
    fixed_batch: int | None = None,
    *,
    quant_format: str = "QDQ",
    per_channel: bool = True,
) -> dict[str, Any]:
    """Write the int8 version of the fp32 graph ``fp32`` to ``out``; returns how it was made.

    calibration: uint8 (N, 3, 32, 32) training images. ``quant_format`` "QDQ" or "QOperator" and
    ``per_channel`` are onnxruntime's options; the defaults are what ``cifarlens export`` uses, the others
    are measured against them by benchmarks/onnx_int8_options.py.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if len(calibration) == 0:
        raise ConfigError("int8 quantisation needs calibration images; raise --calibration-images")
    batch = fixed_batch or CALIBRATION_BATCH

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches: Iterator[dict[str, np.ndarray]] = (
                {"images": np.ascontiguousarray(calibration[i : i + batch])}
                for i in range(0, len(calibration) - batch + 1 if fixed_batch else len(calibration), batch)
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    logging.disable(logging.WARNING)  # the quantiser logs a warning per per-channel BatchNorm it cannot fold
    try:
        with tempfile.TemporaryDirectory(prefix="cifarlens-quant-") as tmp, contextlib.redirect_stdout(io.StringIO()):
            prepared = Path(tmp) / "prepared.onnx"
            quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
            quantize_static(
                str(prepared),
                str(out),
                Reader(),
                quant_format=QuantFormat.from_string(quant_format),
                per_channel=per_channel,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
            )
    finally:
        logging.disable(logging.NOTSET)
    return {
        "type": "int8 static",
        "format": quant_format,
        "per_channel": per_channel,
        "activations": "uint8",
        "weights": "int8",
        "calibration": "MinMax",
        "calibration_images": len(calibration),
        "calibration_source": "training images",
    }
