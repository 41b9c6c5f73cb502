"""Keras models in cifarlens (keras:<Application>, keras:<file>.keras) on Keras 3's torch backend, Keras's
caches for weights and data, and timm's Xceptions."""

from __future__ import annotations

import json
import os
import sys
import warnings

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, cifarlens, roll_back_to_epoch, write_cifar
from safetensors.torch import load_file

from cifarlens.config import build_config
from cifarlens.data import prepare_data
from cifarlens.data.cifar10 import load_cifar10, resolve_data_dir
from cifarlens.errors import ConfigError
from cifarlens.models import create_model, model_capabilities
from cifarlens.models.keras_models import import_keras
from cifarlens.models.pretrained import WeightsUnavailable
from cifarlens.run import RunDir
from cifarlens.training import TrainConfig, recipe_options, resume, train

os.environ.setdefault("KERAS_BACKEND", "torch")  # as cifarlens sets it before its own first import of Keras
pytest.importorskip("keras")


def keras():
    from cifarlens.models.keras_models import import_keras

    return import_keras()


def conv_blocks_keras(path, lambda_layer: bool = False):
    """The seed report's Keras CNN, small: two Conv-BN-pool-dropout blocks, Flatten, Dense(32), Dense(10, softmax)."""
    k = keras()
    k.utils.set_random_seed(1)
    inputs = k.Input((32, 32, 3))
    x = k.layers.Lambda(lambda t: t * 1.0)(inputs) if lambda_layer else inputs
    for width in (8, 16):
        x = k.layers.Conv2D(width, 3, padding="same", activation="relu")(x)
        x = k.layers.BatchNormalization()(x)
        x = k.layers.MaxPooling2D()(x)
        x = k.layers.Dropout(0.2)(x)
    x = k.layers.Dense(32, activation="relu")(k.layers.Flatten()(x))
    model = k.Model(inputs, k.layers.Dense(10, activation="softmax")(x))
    model.save(path)
    return model


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("keras") / "seed_cnn.keras"
    return path, conv_blocks_keras(path)


@pytest.fixture(scope="module")
def data(cifar_root):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return prepare_data(cifar_root, download=False)


def keras_config(root, out, model, **overrides):
    options = {
        "model": model,
        "epochs": 2,
        "batch_size": 50,
        "optimizer": "adam",
        "lr": 1e-3,
        "schedule": "cosine",
        "augment": "flip",
        "data_dir": str(root),
        "download": False,
        "out": str(out),
        "precision": "fp32",
        "evaluate": False,
        "report": False,
        "channels_last": False,
        "threads": 1,
    }
    return build_config(TrainConfig, recipe_options("seed"), {"recipe": "seed"} | options | overrides)


def test_a_keras_file_gives_the_logits_of_its_model_on_nchw_batches(keras_file):
    path, reference = keras_file
    model = create_model(f"keras:{path}").eval()
    assert model.channels_first  # rebuilt in the channels_first format: NCHW goes in as it is
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        expected = reference(x.permute(0, 2, 3, 1))
        got = torch.softmax(model(x), 1)  # the softmax of the last Dense is left out: the model gives logits
    assert torch.allclose(got, expected, atol=1e-5)
    caps = model_capabilities(f"keras:{path}", model)
    assert caps.classifier == "classifier" and caps.cam_layer.startswith("taps.")
    assert caps.mean == (0.0, 0.0, 0.0) and caps.std == (1.0, 1.0, 1.0)  # 0-1 scaling, as the seed report fed it


def test_a_normalization_layer_keeps_the_channels_first_rebuild(tmp_path):
    """A model that normalises its own input (keras.layers.Normalization, channel axis -1) still runs NCHW."""
    k = keras()
    k.utils.set_random_seed(0)
    inputs = k.Input((32, 32, 3))
    x = k.layers.Normalization(mean=[0.49, 0.48, 0.45], variance=[0.06, 0.06, 0.07])(inputs)
    x = k.layers.Conv2D(4, 3, padding="same", activation="relu")(x)
    reference = k.Model(inputs, k.layers.Dense(10)(k.layers.GlobalAveragePooling2D()(x)))
    reference.save(tmp_path / "normalised.keras")
    model = create_model(f"keras:{tmp_path / 'normalised.keras'}").eval()
    assert model.channels_first
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), reference(x.permute(0, 2, 3, 1)), atol=1e-5)


def test_a_keras_file_trains_resumes_bit_identically_and_rebuilds_without_the_file(
    keras_file, cifar_root, data, tmp_path
):
    path, _ = keras_file
    local = tmp_path / "model.keras"
    local.write_bytes(path.read_bytes())
    name = f"keras:{local}"
    full = train(keras_config(cifar_root, tmp_path / "full", name), data=data)
    part = tmp_path / "part"
    train(keras_config(cifar_root, part, name), data=data)
    roll_back_to_epoch(part, 1)  # a kill after epoch 1
    resume(part, data=data)
    wf, wp = load_file(str(full / "model.safetensors")), load_file(str(part / "model.safetensors"))
    assert wf.keys() == wp.keys() and all(torch.equal(wf[k], wp[k]) for k in wf)
    local.unlink()  # the run keeps the Keras config: evaluate and every reader rebuild it alone
    spec = RunDir(full).read_spec()
    assert spec.kwargs["config"]["class_name"] == "Functional"
    from cifarlens.evaluation import evaluate_run

    result = evaluate_run(full, data=data)
    assert result["accuracy"] > 0.2  # chance is 0.1; two epochs on the synthetic classes


def test_keras_run_explains_and_exports(keras_file, cifar_root, data, tmp_path):
    path, _ = keras_file
    run = train(keras_config(cifar_root, tmp_path / "run", f"keras:{path}", epochs=1), data=data)
    from cifarlens.explain.cam import cam_run

    result = cam_run(run, methods=["gradcam", "eigencam"], index="0-1", data_dir=str(cifar_root))
    maps = result.maps["gradcam"]
    assert maps.shape[0] == 2 and torch.isfinite(torch.as_tensor(maps)).all() and torch.as_tensor(maps).amax() > 0
    done = cifarlens("export", run, "--data-dir", cifar_root)
    assert done.returncode == 0, done.stderr
    info = json.loads((run / "export" / "model.json").read_text())
    assert info["verification"]["top1_agreement"] >= 0.999


def test_a_lambda_layer_is_refused_in_one_line_unless_trusted(cifar_root, tmp_path):
    path = tmp_path / "lambda.keras"
    conv_blocks_keras(path, lambda_layer=True)
    done = cifarlens(
        "train",
        "--model",
        f"keras:{path}",
        "--data-dir",
        cifar_root,
        "--no-download",
        "--out",
        tmp_path / "run",
        "--epochs",
        "1",
    )
    assert_one_line_error(done, "Lambda", "--trust-code")
    assert not (tmp_path / "run").exists()
    model = create_model(f"keras:{path}", trust_code=True)  # the user's word: safe_mode off for this file
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 10)


def test_evaluate_scores_a_keras_file_directly(keras_file, cifar_root):
    path, reference = keras_file
    done = cifarlens("evaluate", path, "--data-dir", cifar_root, "--device", "cpu")
    assert done.returncode == 0, done.stderr
    test = load_cifar10(cifar_root, download=False).test
    probs = reference(test.images.permute(0, 2, 3, 1).float() / 255).detach()
    expected = (probs.argmax(1) == test.labels).float().mean().item()
    assert f"accuracy {expected:.2%}" in done.stdout
    assert "calibration: ECE" in done.stdout


def test_pretrained_application_loads_exactly_the_file_in_keras_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv("CIFARLENS_OFFLINE", "1")
    with pytest.raises(WeightsUnavailable, match=r"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"):
        create_model("keras:MobileNetV2", pretrained=True)
    k = keras()
    reference = k.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3))
    cached = tmp_path / "keras" / "models" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
    cached.parent.mkdir(parents=True)
    reference.save(cached)  # Keras's own h5 writer, where Keras looks for ImageNet weights
    model = create_model("keras:MobileNetV2", pretrained=True).eval()
    expected = [torch.as_tensor(np.asarray(w)) for w in reference.get_weights()]
    got = [p.detach() for p in model.keras_vars.values()]
    assert len(got) == len(expected) and all(torch.equal(a, b) for a, b in zip(got, expected))
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        features = model.body(x)[-1]
        assert torch.allclose(features, reference(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2), atol=1e-4)
    caps = model_capabilities("keras:MobileNetV2", model)
    assert caps.normalization(pretrained=True) == ((0.5,) * 3, (0.5,) * 3)  # MobileNetV2's "tf" mode: x/127.5 - 1
    assert caps.gap_features == "features"


def test_keras_imported_with_another_backend_is_one_clear_error(monkeypatch):
    from types import SimpleNamespace

    from cifarlens.models.keras_models import import_keras

    imported = SimpleNamespace(backend=SimpleNamespace(backend=lambda: "tensorflow"))
    monkeypatch.setitem(sys.modules, "keras", imported)  # as if the user's code imported Keras first, on TensorFlow
    with pytest.raises(ConfigError, match="imported with the tensorflow backend.*KERAS_BACKEND=torch"):
        import_keras()


def test_unknown_keras_names_and_arguments_are_named():
    with pytest.raises(ConfigError, match="keras:Xception"):
        create_model("keras:Xceptoin")
    with pytest.raises(ConfigError, match="does not take"):
        create_model("keras:VGG16", dropout=0.1)


def test_keras_dataset_cache_is_searched_without_data_dir_or_env(tmp_path, monkeypatch):
    monkeypatch.delenv("CIFARLENS_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    assert resolve_data_dir()[1] == "the default cache dir"  # Keras has nothing either
    write_cifar(tmp_path / "keras" / "datasets" / "cifar-10-batches-py-target", per_batch=10, test_size=10)
    root, source = resolve_data_dir()
    assert source == "Keras's dataset cache"
    assert len(load_cifar10(download=False).train) == 50


def test_timm_legacy_xception_pretrained_from_the_torch_hub_cache(tmp_path, monkeypatch):
    timm = pytest.importorskip("timm")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("CIFARLENS_OFFLINE", "1")
    with pytest.raises(WeightsUnavailable, match="xception-43020ad28.pth"):
        create_model("timm:legacy_xception", pretrained=True)
    reference = timm.create_model("legacy_xception").state_dict()
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "xception-43020ad28.pth"
    cached.parent.mkdir(parents=True)
    torch.save(reference, cached)
    model = create_model("timm:legacy_xception", pretrained=True).eval()
    got = model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in reference.items() if not k.startswith("fc."))
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 10)


def test_keras_keeps_tensorflows_log_lines_off_the_output_unless_asked(monkeypatch):
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    import_keras()
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "3"  # TensorFlow's C++ logs off
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    import_keras()
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"  # the user's own level is kept
