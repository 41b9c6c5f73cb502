"""cifarlens export --format tflite|savedmodel: ONNX -> onnx2tf -> TensorFlow, verified against PyTorch.

Needs the optional extra (pip install 'cifarlens[tf]'); without it these tests skip with that reason,
except the one checking that the missing extra is named in one line. One tiny tutorial net is
trained once (module fixture) and exported to TFLite once through the real command.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
from conftest import assert_one_line_error, cifarlens
from test_export import run  # noqa: F401  (the fixture: a tutorial net trained on the synthetic data)

from cifarlens.deploy.onnx_export import VerificationError, load_eval_images
from cifarlens.deploy.runtime import TorchClassifier, load_torch, open_classifier

NEEDS_EXTRA = "needs the TensorFlow extra: pip install 'cifarlens[tf]'"
pytestmark = [
    pytest.mark.filterwarnings("ignore:.*differ from the official CIFAR-10 MD5"),
    pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated"),  # the point: TensorFlow's own reads it
]


@pytest.fixture(scope="module")
def tf():
    pytest.importorskip("onnx2tf", reason=NEEDS_EXTRA)
    return pytest.importorskip("tensorflow", reason=NEEDS_EXTRA)


@pytest.fixture(scope="module")
def eval_images(run):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_eval_images(run, calibration_images=0)


@pytest.fixture(scope="module")
def torch_classes(run, eval_images):
    model, spec = load_torch(run)
    return TorchClassifier(model, spec, str(run)).logits(eval_images.test_images).argmax(1)


@pytest.fixture(scope="module")
def tflite_export(tf, run):
    """``cifarlens export RUN --format tflite`` as a user runs it."""
    result = cifarlens("export", run, "--format", "tflite")
    assert result.returncode == 0, result.stderr + result.stdout
    return run / "export" / "model.tflite", result


def test_tflite_export_is_verified_and_loads_in_tensorflow(tf, tflite_export, eval_images, torch_classes):
    path, result = tflite_export
    assert f"wrote {path} and {path}.json" in result.stdout and "100.00%" in result.stdout
    info = json.loads((path.parent / "model.tflite.json").read_text())
    assert info["format"] == "cifarlens-tflite" and info["route"].startswith("torch.onnx -> onnx2tf")
    assert info["input"]["dtype"] == "uint8" and info["input"]["layout"] == "NHWC"
    assert info["input"]["shape"] == ["batch", 32, 32, 3] and len(info["classes"]) == 10
    check = info["verification"]
    assert check["images"] == 100 and check["top1_agreement"] >= 0.999 and check["max_abs_logit_diff"] < 1e-3

    # TensorFlow's own interpreter, fed the NHWC uint8 batch the JSON describes: PyTorch's classes.
    interpreter = tf.lite.Interpreter(model_path=str(path))
    images = np.ascontiguousarray(eval_images.test_images.transpose(0, 2, 3, 1))
    interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], list(images.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], images)
    interpreter.invoke()
    logits = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_array_equal(logits.argmax(1), torch_classes)

    classifier = open_classifier(path)  # what predict and serve use
    assert classifier.backend == "tflite" and classifier.classes[0] == "airplane"
    np.testing.assert_array_equal(classifier.logits(eval_images.test_images, batch_size=7).argmax(1), torch_classes)


def test_savedmodel_export_is_verified_and_loads_in_tensorflow(tf, run, eval_images, torch_classes, tmp_path):
    from cifarlens.deploy.tf_export import export_tf_run

    out = tmp_path / "saved"
    info = export_tf_run(run, eval_images, out=out, fmt="savedmodel")
    assert info["verification"]["top1_agreement"] >= 0.999
    assert json.loads((tmp_path / "saved.json").read_text())["format"] == "cifarlens-savedmodel"
    assert not list(out.glob("*.tflite")) and sorted(p.name for p in tmp_path.iterdir()) == ["saved", "saved.json"]

    serve = tf.saved_model.load(str(out)).signatures["serving_default"]
    images = tf.constant(eval_images.test_images.transpose(0, 2, 3, 1))
    logits = next(iter(serve(images=images).values())).numpy()
    np.testing.assert_array_equal(logits.argmax(1), torch_classes)
    assert open_classifier(out).backend == "tensorflow"


def test_export_refused_below_agreement_writes_nothing(tf, run, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from cifarlens.cli import app
    from cifarlens.deploy import tf_export

    real = tf_export.open_converted

    def shifted_logits(folder, fmt, info):  # a converter bug that moves every class by one
        classifier = real(folder, fmt, info)
        run_images = classifier.run
        classifier.run = lambda images: np.roll(run_images(images), 1, axis=1)
        return classifier

    monkeypatch.setattr(tf_export, "open_converted", shifted_logits)
    out = tmp_path / "m.tflite"
    result = CliRunner().invoke(app, ["export", str(run), "--format", "tflite", "--out", str(out)])
    assert result.exit_code == 2, result.output
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "agrees with PyTorch on only" in result.stderr and "nothing written" in result.stderr
    assert list(tmp_path.iterdir()) == []  # no model, no JSON, no work folder
    with pytest.raises(VerificationError, match="agrees with PyTorch on only"):
        tf_export.export_tf_run(run, load_eval_images(run, calibration_images=0), out=out, fmt="tflite")
    assert list(tmp_path.iterdir()) == []


def test_missing_extra_is_named_in_one_line(run):
    block = (
        "import sys; sys.modules['tensorflow'] = sys.modules['onnx2tf'] = None; from cifarlens.cli import app; app()"
    )
    result = subprocess.run(
        [sys.executable, "-c", block, "export", str(run), "--format", "tflite"],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=300,
        check=False,
    )
    assert_one_line_error(result, "TensorFlow is not installed", "pip install 'cifarlens[tf]'")


def test_unknown_format_and_int8_are_one_line_errors(run):
    from typer.testing import CliRunner

    from cifarlens.cli import app

    for args, fragment in (
        (["--format", "coreml"], "choose onnx, tflite or savedmodel"),
        (["--format", "tflite", "--quantize", "int8"], "--quantize int8 is for --format onnx"),
    ):
        result = CliRunner().invoke(app, ["export", str(run), *args])
        assert result.exit_code == 2 and fragment in result.stderr.replace("\n", " "), result.output
