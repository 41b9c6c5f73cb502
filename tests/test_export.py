"""cifarlens.deploy: ONNX export + verification, int8, image files for predict, safe loading, bench.

One tiny tutorial net is trained once on the synthetic data (module fixture) and exported once
through the real ``cifarlens export`` command; the other tests reuse both.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, cifarlens, real_data_dir
from PIL import Image
from safetensors.torch import save_file

from cifarlens import run as rundir
from cifarlens.data import prepare_data
from cifarlens.data.image_files import ImageFileError, collect_images, load_image
from cifarlens.deploy.onnx_export import VerificationError, export_run, load_eval_images
from cifarlens.deploy.predict import predict_files
from cifarlens.deploy.runtime import OnnxClassifier, open_classifier
from cifarlens.errors import CifarlensError, RunDirError


def _samples_dir() -> Path:
    """The shared sample JPEGs: beside the CIFAR-10 folder that CIFARLENS_DATA_DIR names (../shared/data),
    else beside the checkout."""
    data = real_data_dir()
    beside_data = data.parent / "samples" if data else None
    if beside_data and beside_data.is_dir():
        return beside_data
    return Path(__file__).resolve().parents[1].parent / "shared" / "data" / "samples"


SAMPLES = _samples_dir()
needs_samples = pytest.mark.skipif(not SAMPLES.is_dir(), reason="no shared sample JPEGs")
pytestmark = pytest.mark.filterwarnings("ignore:.*differ from the official CIFAR-10 MD5")


@pytest.fixture(scope="module")
def run(cifar_root, tmp_path_factory):
    """A tutorial net trained for 2 epochs on 500 synthetic images (it learns them: ~100% test accuracy)."""
    from cifarlens.config import build_config
    from cifarlens.training import TrainConfig, recipe_options, train

    options = dict(
        model="tutorial",
        epochs=2,
        batch_size=25,
        optimizer="adam",
        lr=2e-3,
        schedule="cosine",
        augment="flip",
        data_dir=str(cifar_root),
        download=False,
        out=str(tmp_path_factory.mktemp("runs") / "tut"),
        precision="fp32",
        evaluate=False,
        channels_last=False,
        threads=1,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = prepare_data(cifar_root, download=False)
        return train(build_config(TrainConfig, recipe_options("seed"), options), data=data)


@pytest.fixture(scope="module")
def exported(run):
    """``cifarlens export RUN --quantize int8`` as a user runs it."""
    result = cifarlens("export", run, "--quantize", "int8", "--calibration-images", 100)
    assert result.returncode == 0, result.stderr + result.stdout
    return run / "export" / "model.onnx", result


@pytest.fixture(scope="module")
def eval_images(run):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_eval_images(run, calibration_images=50)


# ----------------------------------------------------------------------------- export


def test_export_writes_verified_graphs_with_preprocessing_contract(exported, run, eval_images):
    onnx_path, result = exported
    int8_path = onnx_path.with_name("model.int8.onnx")
    assert f"wrote {onnx_path}, {int8_path} and {onnx_path.with_suffix('.json')}" in result.stdout  # paths whole
    info = json.loads(onnx_path.with_suffix(".json").read_text())
    assert info["format"] == "cifarlens-onnx" and info["exporter"] in ("dynamo", "torchscript")
    assert info["input"]["dtype"] == "uint8" and info["input"]["layout"] == "NCHW"
    assert info["classes"][0] == "airplane" and len(info["classes"]) == 10
    check = info["verification"]
    assert check["images"] == 100 and check["top1_agreement"] >= 0.999
    assert check["max_abs_logit_diff"] < 1e-3
    assert "agreement" in result.stdout and "100.00%" in result.stdout

    # The graph takes raw uint8 pixels: same logits as the PyTorch model fed (x/255 - mean)/std by hand.
    model, spec = rundir.RunDir(run).load_model()
    images = eval_images.test_images[:20]
    x = (torch.from_numpy(images).float() / 255 - torch.tensor(spec.mean).view(1, 3, 1, 1)) / torch.tensor(
        spec.std
    ).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = model(x).numpy()
    got = OnnxClassifier(onnx_path).logits(images)
    np.testing.assert_allclose(got, expected, atol=1e-4)

    int8 = json.loads(onnx_path.with_name("model.int8.json").read_text())
    assert int8["quantization"]["format"] == "QDQ" and int8["quantization"]["calibration_source"] == "training images"
    assert int8["verification"]["accuracy_drop_points"] <= 0.5
    assert OnnxClassifier(int8_path).backend == "onnxruntime-int8"


def test_export_refuses_and_writes_nothing_below_thresholds(run, eval_images, tmp_path):
    out = tmp_path / "m.onnx"
    with pytest.raises(VerificationError, match="agrees with PyTorch on only"):
        export_run(run, eval_images, out=out, min_agreement=1.01)
    assert not out.exists() and not out.with_suffix(".json").exists()
    with pytest.raises(VerificationError, match="int8 quantisation costs"):
        export_run(run, eval_images, out=out, quantize="int8", max_int8_drop=-1.0)
    assert out.exists() and not (tmp_path / "m.int8.onnx").exists()  # the verified fp32 graph is kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.onnx"]  # no temporary files left


def test_static_batch_export_still_predicts_any_number_of_images(run, eval_images, tmp_path):
    out = tmp_path / "static.onnx"
    export_run(run, eval_images, out=out, dynamic_batch=False)
    clf = OnnxClassifier(out)
    assert clf.fixed_batch == 1
    assert clf.logits(eval_images.test_images[:3]).shape == (3, 10)


# ----------------------------------------------------------------------------- image files


def rgb_at(img: np.ndarray, row: int, col: int) -> tuple[int, ...]:
    return tuple(int(v) for v in img[:, row, col])


def test_every_image_mode_becomes_32x32_rgb(tmp_path):
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:, 20:, 3] = 255  # left half fully transparent red, right half opaque red
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    Image.new("L", (50, 50), 100).save(tmp_path / "gray.png")
    pal = Image.new("P", (30, 30), 1)
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.save(tmp_path / "palette.png")
    Image.fromarray(np.full((20, 20), 32896, np.uint16)).save(tmp_path / "gray16.png")  # half of 65535
    Image.new("CMYK", (40, 40), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=95)
    wide = np.zeros((20, 40, 3), np.uint8)
    wide[:, :20] = (255, 0, 0)  # stored sideways: red on the left, blue on the right
    wide[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.fromarray(wide).save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    Image.fromarray(np.full((300, 700, 3), 200, np.uint8)).save(tmp_path / "large.png")

    loaded = {p.stem: load_image(p) for p in sorted(tmp_path.iterdir())}
    for name, img in loaded.items():
        assert img.shape == (3, 32, 32) and img.dtype == np.uint8, name
    assert rgb_at(loaded["rgba"], 16, 2) == (255, 255, 255)  # transparent: composited on white
    assert rgb_at(loaded["rgba"], 16, 29) == (255, 0, 0)
    assert rgb_at(loaded["gray"], 5, 5) == (100, 100, 100)
    assert rgb_at(loaded["palette"], 5, 5) == (0, 0, 255)
    assert rgb_at(loaded["gray16"], 5, 5) == (128, 128, 128)  # scaled, not clipped to 255
    r, g, b = rgb_at(loaded["cmyk"], 16, 16)
    assert r > 200 and g < 60 and b < 60
    top, bottom = rgb_at(loaded["rotated"], 2, 16), rgb_at(loaded["rotated"], 29, 16)
    assert top[0] > 200 and top[2] < 60 and bottom[2] > 200 and bottom[0] < 60  # upright: red above blue
    assert rgb_at(loaded["large"], 16, 16) == (200, 200, 200)


def bad_files(folder: Path) -> dict[str, Path]:
    good = folder / "good.png"
    Image.fromarray(np.full((64, 48, 3), 90, np.uint8)).save(good)
    (folder / "empty.png").write_bytes(b"")
    (folder / "truncated.png").write_bytes(good.read_bytes()[:60])
    (folder / "notes.jpg").write_text("this is not an image\n")
    Image.new("RGB", (200, 200)).save(folder / "big.png")  # a bomb under the lowered limit below
    return {p.stem: p for p in folder.iterdir()}


def test_unreadable_files_each_get_a_clear_error(tmp_path):
    files = bad_files(tmp_path)
    assert load_image(files["good"], max_pixels=10_000).shape == (3, 32, 32)
    expected = {
        "empty": "empty file (0 bytes)",
        "truncated": "truncated or corrupt",
        "notes": "not an image",
        "big": "decompression-bomb guard",
    }
    for name, fragment in expected.items():
        with pytest.raises(ImageFileError, match=re.escape(fragment)) as info:
            load_image(files[name], max_pixels=10_000)
        assert str(files[name]) in str(info.value)


def test_folders_are_walked_once_and_loops_reported(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "a" / "one.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "a" / "b" / "two.jpg")
    (tmp_path / "a" / "readme.txt").write_text("not taken from a folder")
    os.symlink(tmp_path / "a", tmp_path / "a" / "b" / "loop")
    found = collect_images([tmp_path / "a", tmp_path / "missing.png"])
    assert [p.name for p in found.files] == ["two.jpg", "one.png"]
    assert any("directory loop" in e for e in found.errors)
    assert any("missing.png: no such file" in e for e in found.errors)


@needs_samples
def test_onnx_and_pytorch_predict_the_same_on_real_jpegs(exported, run):
    folders = [SAMPLES / "cat", SAMPLES / "ship"]
    torch_preds = list(predict_files(open_classifier(run), folders, k=3))
    onnx_preds = list(predict_files(open_classifier(exported[0]), folders, k=3))
    assert len(torch_preds) >= 2 and all(p.error is None for p in torch_preds)
    assert [p.top[0][0] for p in torch_preds] == [p.top[0][0] for p in onnx_preds]
    for p in onnx_preds:
        assert len(p.top) == 3 and p.top[0][1] >= p.top[1][1] >= p.top[2][1]


def test_predict_command_classifies_good_files_and_exits_1_for_bad_ones(exported, tmp_path):
    files = bad_files(tmp_path)
    result = cifarlens("predict", exported[0], tmp_path, "--json", "--top-k", 2, "--max-pixels", 10_000)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    by_file = {Path(r["file"]).stem: r for r in rows}
    assert set(by_file) == set(files)
    assert by_file["good"]["class"] in json.loads(exported[0].with_suffix(".json").read_text())["classes"]
    assert len(by_file["good"]["top_k"]) == 2
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 4 and all("good.png" not in ln for ln in errors)
    # The table names each file by its whole path, folded over lines when long, never cut off.
    deep = tmp_path / ("a_folder_name_that_makes_the_path_long_" * 3) / "good.png"
    deep.parent.mkdir()
    files["good"].rename(deep)
    result = cifarlens("predict", exported[0], deep)
    assert result.returncode == 0, result.stderr
    file_cells = [line.split("│")[1].strip() for line in result.stdout.splitlines() if line.startswith("│")]
    assert "".join(file_cells) == str(deep)


# ----------------------------------------------------------------------------- safe loading


class Payload:
    """An arbitrary object in a pickle: weights_only=True must refuse it even when the file is trusted."""


def test_pickle_refused_unless_trusted_then_weights_only(run, tmp_path):
    model, _ = rundir.RunDir(run).load_model()
    pt = tmp_path / "weights.pt"
    torch.save(model.state_dict(), pt)
    with pytest.raises(RunDirError, match="--trust-pickle"):
        open_classifier(pt)
    trusted = open_classifier(pt, trust_pickle=True, model="tutorial")
    images = np.zeros((2, 3, 32, 32), np.uint8)
    np.testing.assert_allclose(trusted.logits(images), open_classifier(run).logits(images), atol=1e-5)

    evil = tmp_path / "evil.pkl"
    torch.save({"x": Payload()}, evil)
    with pytest.raises(CifarlensError, match="weights_only=False, which cifarlens never uses"):
        open_classifier(evil, trust_pickle=True, model="tutorial")
    with pytest.raises(CifarlensError, match="do not fit the model"):
        open_classifier(pt, trust_pickle=True, model="seed_bn8")

    result = cifarlens("predict", pt, tmp_path)
    assert_one_line_error(result, "pickle", "--trust-pickle")


def test_mismatched_checkpoint_names_the_first_bad_tensor(run, tmp_path):
    _, meta = rundir.read_spec(run / rundir.RunDir.WEIGHTS)
    model, _ = rundir.RunDir(run).load_model()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state["classifier.fc2.weight"] = torch.zeros(3, 3)
    bad = tmp_path / "bad.safetensors"
    save_file(state, str(bad), metadata=meta)
    with pytest.raises(RunDirError, match=r"tensor 'classifier.fc2.weight' has shape \(3, 3\)"):
        open_classifier(bad)


# ----------------------------------------------------------------------------- bench


def test_bench_measures_every_backend_on_the_same_images(exported, run):
    out = run / "export" / "bench_test.json"
    result = cifarlens(
        "bench",
        run,
        "--backends",
        "torch,onnxruntime,onnxruntime-int8",
        "--batch-sizes",
        "1,16",
        "--seconds",
        0.1,
        "--rounds",
        2,
        "--threads",
        1,
        "--out",
        out,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    report = json.loads(out.read_text())
    assert report["threads"] == 1 and report["peak_gflops_fp32_matmul"] > 0
    assert report["flops_per_image"] == 2 * 651_720  # the tutorial net's multiply-adds (test_models), 2 FLOPs each
    backends = {r["backend"]: r for r in report["results"]}
    assert list(backends) == ["torch", "onnxruntime", "onnxruntime-int8"]
    for r in backends.values():
        assert r["latency_p99_ms"] >= r["latency_p50_ms"] > 0
        assert set(r["throughput"]) == {"1", "16"} and min(r["throughput"].values()) > 0
        assert all(len(values) == 2 for values in r["throughput_rounds"].values())  # round-robin: every backend twice
        assert r["throughput"]["16"] == pytest.approx(sum(r["throughput_rounds"]["16"]) / 2)  # median of two
        assert r["reference"] == "torch" and r["vs_reference"] > 0
        assert r["vs_fp32_matmul"] == pytest.approx(r["gflops"] / report["peak_gflops_fp32_matmul"])
    assert backends["torch"]["vs_reference"] == 1.0
    assert backends["onnxruntime"]["accuracy"] == backends["torch"]["accuracy"]
    bad = cifarlens("bench", run, "--backends", "torch,tensorrt")
    assert_one_line_error(bad, "unknown --backends 'tensorrt'")
    assert_one_line_error(cifarlens("bench", run, "--rounds", 0), "--rounds must be 1 or more")


def test_every_backend_gives_the_models_predictions(exported, run, eval_images):
    """bf16 and int8 backends keep the predictions, fp32 ones the logits; what predict and serve open."""
    pytest.importorskip("openvino")
    images = eval_images.test_images[:200]
    reference = open_classifier(run).logits(images)
    for backend in ("torch-bf16", "onnxruntime", "openvino", "openvino-bf16", "onnxruntime-int8", "openvino-int8"):
        classifier = open_classifier(run, backend=backend, threads=1)
        assert classifier.backend == backend
        logits = classifier.logits(images, batch_size=64)  # 200 = 3 x 64 + 8: two compiled shapes for OpenVINO
        agreement = (logits.argmax(1) == reference.argmax(1)).mean()
        if backend in ("onnxruntime", "openvino"):
            np.testing.assert_allclose(logits, reference, atol=1e-4)
        else:
            assert agreement >= 0.95, backend
    graph = open_classifier(exported[0].with_name("model.int8.onnx"), backend="openvino")
    assert graph.backend == "openvino-int8"  # the graph says it is int8


def test_backend_mistakes_are_one_line_errors(exported, run, tmp_path):
    folder = SAMPLES / "cat"
    cases = {
        ("predict", run, folder, "--backend", "tensorrt"): "unknown backend 'tensorrt'",
        ("predict", exported[0], folder, "--backend", "torch"): "is an ONNX graph; use --backend onnxruntime",
        ("predict", exported[0], folder, "--backend", "openvino-int8"): "is the fp32 graph; pass the int8 one",
        ("serve", run, "--backend", "tensorrt"): "unknown backend 'tensorrt'",
    }
    for args, message in cases.items():
        assert_one_line_error(cifarlens(*args), message)
    weights = tmp_path / "model.safetensors"  # weights never exported: no model.int8.onnx beside them
    weights.write_bytes((run / "model.safetensors").read_bytes())
    result = cifarlens("predict", weights, folder, "--backend", "onnxruntime-int8")
    assert_one_line_error(result, "create it with cifarlens export")
    assert "--quantize int8" in result.stderr


@needs_samples
def test_predict_runs_on_the_chosen_backend(exported, run):
    pytest.importorskip("openvino")
    folder = SAMPLES / "cat"
    by_backend = {}
    for backend in ("torch", "openvino"):
        result = cifarlens("predict", run, folder, "--json", "--backend", backend, "--threads", 1)
        assert result.returncode == 0, result.stderr
        by_backend[backend] = [json.loads(line)["class"] for line in result.stdout.splitlines()]
    assert by_backend["torch"] == by_backend["openvino"] and by_backend["torch"]


def test_pillow_limit_set_explicitly_refuses_bombs_as_errors(tmp_path):
    from PIL import Image as PILImage

    from cifarlens.data.image_files import set_pillow_pixel_limit

    Image.new("RGB", (200, 200)).save(tmp_path / "big.png")
    old = PILImage.MAX_IMAGE_PIXELS
    try:
        set_pillow_pixel_limit(10_000)  # Pillow itself now warns at 40,000 pixels; that warning must become the error
        with pytest.raises(ImageFileError, match="decompression-bomb guard"):
            load_image(tmp_path / "big.png", max_pixels=10**9)
    finally:
        PILImage.MAX_IMAGE_PIXELS = old
