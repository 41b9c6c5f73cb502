"""Transfer learning: pretrained weights (offline), --freeze, --backbone-lr, --image-size, --features-from.

No test reaches the network: pretrained weights are files the tests write themselves under a
temporary TORCH_HOME / HF hub cache, and downloads are switched off (CIFARLENS_OFFLINE=1) or
made to fail locally.
"""

import csv
import json
import os
import urllib.error
import warnings

import pytest
import torch
import torchvision.models as tvm
from conftest import assert_one_line_error, cifarlens
from rich.console import Console
from safetensors.torch import load_file
from test_training import quick_config as training_config

from cifarlens.config import build_config, read_yaml
from cifarlens.data import model_input, prepare_data
from cifarlens.errors import ConfigError
from cifarlens.models import create_model, model_capabilities
from cifarlens.models.pretrained import IMAGENET_MEAN, IMAGENET_STD, WeightsUnavailable, hub_weights_path
from cifarlens.report import after_training
from cifarlens.run import RunDir, read_spec
from cifarlens.run.predictor import Predictor
from cifarlens.training import TrainConfig, recipe_options, train
from cifarlens.training.optim import param_groups
from cifarlens.training.transfer import freeze, train_mode

QUIET = Console(quiet=True)


def quick_config(root, out, **overrides):
    """test_training's tiny tutorial config: one epoch of 50-image batches unless overridden."""
    return training_config(root, out, **({"epochs": 1, "batch_size": 50, "schedule": "constant"} | overrides))


@pytest.fixture(scope="module")
def data(cifar_root):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return prepare_data(cifar_root, download=False, subset=200)


@pytest.fixture(scope="module")
def torch_home(tmp_path_factory):
    """A TORCH_HOME whose hub cache holds 'ImageNet weights' for mobilenet_v2: a seeded random state dict
    saved under the exact file name torchvision's weights API asks for."""
    home = tmp_path_factory.mktemp("torch_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(home))
        path = hub_weights_path(tvm.MobileNet_V2_Weights.DEFAULT)
    path.parent.mkdir(parents=True)
    torch.manual_seed(123)
    state = tvm.mobilenet_v2(weights=None).state_dict()
    torch.save(state, path)
    return home, state


@pytest.fixture
def offline_home(torch_home, monkeypatch):
    home, state = torch_home
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setenv("CIFARLENS_OFFLINE", "1")
    return state


def test_pretrained_loads_exactly_the_cached_weights_and_adapts_the_head(offline_home):
    model = create_model("mobilenet_v2", num_classes=10, pretrained=True, cifar_stem=False)
    got = model.state_dict()
    backbone = [k for k in got if not k.startswith("classifier")]
    assert backbone and all(torch.equal(got[k], offline_home[k]) for k in backbone)
    assert got["classifier.1.weight"].shape == (10, 1280)
    # Same tensors, same names as the model a run is rebuilt with (pretrained=False).
    rebuilt = create_model("mobilenet_v2", num_classes=10, cifar_stem=False).state_dict()
    assert {k: v.shape for k, v in rebuilt.items()} == {k: v.shape for k, v in got.items()}


def test_offline_without_the_file_names_it_and_the_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    monkeypatch.setenv("CIFARLENS_OFFLINE", "1")
    with pytest.raises(WeightsUnavailable) as err:
        create_model("resnet18", pretrained=True, cifar_stem=False)
    message = str(err.value)
    assert "resnet18-f37072fd.pth" in message and str(tmp_path / "empty" / "hub" / "checkpoints") in message
    assert "\n" not in message


def test_failed_download_names_the_file_and_the_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv("CIFARLENS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def no_network(url, dst, *args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(
        WeightsUnavailable, match=r"mobilenet_v2-7ebf99e0\.pth.*network is unreachable.*hub/checkpoints"
    ):
        create_model("mobilenet_v2", pretrained=True)


def test_cli_offline_error_is_one_line(cifar_root, tmp_path):
    env = os.environ | {"TORCH_HOME": str(tmp_path / "th"), "CIFARLENS_OFFLINE": "1"}
    result = cifarlens(
        "train",
        "--model",
        "convnext_tiny",
        "--pretrained",
        "--data-dir",
        cifar_root,
        "--out",
        tmp_path / "run",
        "--no-download",
        env=env,
        timeout=300,
    )
    assert_one_line_error(result, "convnext_tiny-983f1562.pth")


@pytest.fixture(scope="module")
def pretrained_run(cifar_root, data, torch_home, tmp_path_factory):
    home, state = torch_home
    out = tmp_path_factory.mktemp("runs") / "mnv2"
    cfg = quick_config(
        cifar_root,
        out,
        model="mobilenet_v2",
        pretrained=True,
        freeze="backbone",
        image_size=64,
        evaluate=True,
        lr=0.01,
        model_args={"dropout": 0.0},
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(home))
        mp.setenv("CIFARLENS_OFFLINE", "1")
        after_training(train(cfg, data=data), console=QUIET, data=data)
    return out, state


def test_pretrained_run_freezes_the_backbone_and_rebuilds_without_hub_weights(pretrained_run, tmp_path, monkeypatch):
    out, state = pretrained_run
    spec, _ = read_spec(out / "model.safetensors")
    assert spec.mean == IMAGENET_MEAN and spec.std == IMAGENET_STD and spec.image_size == 64
    assert spec.kwargs == {"dropout": 0.0, "cifar_stem": False}  # never "pretrained": rebuilding needs no hub file
    weights = load_file(str(out / "model.safetensors"))
    # Frozen backbone: weights and BatchNorm running statistics are the pretrained ones, bit for bit.
    assert all(torch.equal(weights[k], state[k]) for k in state if not k.startswith("classifier"))
    assert not torch.equal(weights["classifier.1.bias"], torch.zeros(10))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "nothing-here"))
    monkeypatch.setenv("CIFARLENS_OFFLINE", "1")
    model, spec = RunDir(out).load_model()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test"]["n"] == len(spec.classes) * 10  # the synthetic test split


def test_readers_feed_the_run_at_its_image_size(pretrained_run, data):
    out, _ = pretrained_run
    model, spec = RunDir(out).load_model()
    seen = []
    model.features.register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape[-2:])))
    logits = Predictor(model, spec).logits(data.test.images)
    assert set(seen) == {(64, 64)}
    summary = json.loads((out / "summary.json").read_text())
    accuracy = (logits.argmax(1) == data.test.labels).float().mean().item()
    assert summary["test"]["accuracy"] == pytest.approx(accuracy)


def test_model_input_resizes_and_normalises():
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    assert model_input(images, image_size=None).shape == (4, 3, 32, 32)
    up = model_input(images, (0.5,) * 3, (0.25,) * 3, image_size=96)
    assert up.shape == (4, 3, 96, 96)
    flat = torch.full((1, 3, 32, 32), 255, dtype=torch.uint8)
    assert torch.allclose(model_input(flat, (0.5,) * 3, (0.25,) * 3, image_size=16), torch.full((1, 3, 16, 16), 2.0))


def test_freeze_until_layer_and_backbone_lr_groups():
    model = create_model("resnet18")
    caps = model_capabilities("resnet18")
    frozen = freeze(model, "until:layer2", caps)
    assert "conv1.weight" in frozen and "layer2.1.bn2.bias" in frozen and "layer3.0.conv1.weight" not in frozen
    assert all(not p.requires_grad for n, p in model.named_parameters() if n.startswith(("bn1", "layer1", "layer2")))
    train_mode(model)
    assert not model.layer2[0].bn1.training and model.layer3[0].bn1.training
    cfg = build_config(TrainConfig, recipe_options("resnet18"), {"lr": 0.1, "head_lr": 0.2, "backbone_lr": 0.01})
    groups = param_groups(model, cfg, caps)
    trained = {id(p) for g in groups for p in g["params"]}
    assert all(id(p) not in trained for n, p in model.named_parameters() if n in frozen)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert lr_of[id(model.fc.weight)] == 0.2 and lr_of[id(model.fc.bias)] == 0.1
    assert lr_of[id(model.layer4[1].conv2.weight)] == 0.01 and lr_of[id(model.layer3[0].bn1.bias)] == 0.01


def test_freeze_backbone_keeps_the_head_and_bad_layers_are_named():
    model = create_model("tutorial")
    assert model_capabilities("tutorial").head == "classifier"
    freeze(model, "backbone", model_capabilities("tutorial"))
    assert [n for n, p in model.named_parameters() if p.requires_grad][0] == "classifier.fc1.weight"
    with pytest.raises(ConfigError, match="no module 'layer9'.*top-level modules: conv1, bn1"):
        freeze(create_model("resnet18"), "until:layer9", model_capabilities("resnet18"))
    with pytest.raises(ConfigError, match="invalid --freeze 'head'"):
        build_config(TrainConfig, {"model": "tutorial", "freeze": "head"})


def test_config_rejects_pretrained_misuse():
    with pytest.raises(ConfigError, match="model 'tutorial' has no pretrained weights; use one of .*resnet18"):
        build_config(TrainConfig, {"model": "tutorial", "pretrained": True})
    with pytest.raises(ConfigError, match="pass --pretrained, not pretrained in --model-args"):
        build_config(TrainConfig, {"model": "resnet18", "model_args": {"pretrained": True}})
    with pytest.raises(ConfigError, match="--image-size must be between 16 and 512"):
        build_config(TrainConfig, recipe_options("tutorial"), {"image_size": 8})
    with pytest.raises(ConfigError, match="CIFAR stem"):
        create_model("resnet18", pretrained=True)


def test_a_model_that_cannot_take_the_image_size_stops_before_writing(cifar_root, data, tmp_path):
    with pytest.raises(ConfigError, match="model tutorial does not take 64x64 inputs"):
        train(quick_config(cifar_root, tmp_path / "run", image_size=64), data=data)
    assert not (tmp_path / "run" / "config.yaml").exists()


@pytest.fixture(scope="module")
def tutorial_run(cifar_root, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tutorial"
    return train(quick_config(cifar_root, out, epochs=2), data=data)


def test_features_from_a_run_fits_logistic_regression_that_evaluate_reproduces(
    cifar_root, data, tutorial_run, tmp_path
):
    cfg = quick_config(cifar_root, tmp_path / "probe", features_from=str(tutorial_run), evaluate=True, tta=False)
    out = after_training(train(cfg, data=data), console=QUIET, data=data)
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert len(rows) == 1 and rows[0]["test_acc"] and rows[0]["train_acc"]
    summary = json.loads((out / "summary.json").read_text())
    # The folded Linear head scores exactly what the logistic regression scored on the features.
    assert summary["test"]["accuracy"] == pytest.approx(float(rows[0]["test_acc"]), abs=1e-6)
    assert summary["train"]["final_test_acc"] == pytest.approx(float(rows[0]["test_acc"]), abs=1e-5)
    probe, spec = RunDir(out).load_model()
    source, _ = RunDir(tutorial_run).load_model()
    assert spec.name == "tutorial"
    # Like a trained run, the probe records the data folder it read, so evaluate finds it from anywhere.
    assert read_yaml(out / "config.yaml")["data_dir"] == str(data.root.resolve())
    assert torch.equal(probe.features[0].weight, source.features[0].weight)  # the backbone is frozen as it was
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from cifarlens.training.linear_probe import penultimate_features

    x_train = penultimate_features(source, data.train.images, spec, torch.device("cpu")).numpy()
    x_test = penultimate_features(source, data.test.images, spec, torch.device("cpu")).numpy()
    scaler = StandardScaler().fit(x_train)
    clf = LogisticRegression(max_iter=1000).fit(scaler.transform(x_train), data.train.labels.numpy())
    assert summary["test"]["accuracy"] == pytest.approx(clf.score(scaler.transform(x_test), data.test.labels.numpy()))


def test_features_from_a_pretrained_backbone(cifar_root, data, offline_home, tmp_path):
    cfg = quick_config(cifar_root, tmp_path / "probe", features_from="mobilenet_v2", evaluate=False)
    out = train(cfg, data=data)
    spec, _ = read_spec(out / "model.safetensors")
    assert spec.name == "mobilenet_v2" and spec.mean == IMAGENET_MEAN and spec.kwargs == {"cifar_stem": False}
    weights = load_file(str(out / "model.safetensors"))
    assert torch.equal(weights["features.0.0.weight"], offline_home["features.0.0.weight"])
    with pytest.raises(ConfigError, match="neither a run directory nor a model with pretrained weights"):
        train(quick_config(cifar_root, tmp_path / "bad", features_from="nowhere/run"), data=data)
    assert not (tmp_path / "bad").exists()  # a failed start leaves no empty run folder


def _hf_cache_with(tmp_path, repo: str, state: dict) -> str:
    """A Hugging Face hub cache holding ``repo``'s model.safetensors, laid out as huggingface_hub writes it."""
    from safetensors.torch import save_file

    cache = tmp_path / "hf" / "hub"
    folder = cache / f"models--{repo.replace('/', '--')}"
    commit = "0" * 40
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    (folder / "snapshots" / commit).mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "snapshots" / commit / "model.safetensors"))
    return str(cache)


def test_timm_pretrained_from_the_hub_cache_and_offline_error(tmp_path, monkeypatch):
    pytest.importorskip("timm")
    import timm

    monkeypatch.setenv("CIFARLENS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(
        WeightsUnavailable, match=r"model\.safetensors of Hugging Face repo timm/test_resnet\.r160_in1k.*empty"
    ):
        create_model("timm:test_resnet.r160_in1k", pretrained=True)
    torch.manual_seed(5)
    state = timm.create_model("test_resnet.r160_in1k").state_dict()
    monkeypatch.setenv("HF_HUB_CACHE", _hf_cache_with(tmp_path, "timm/test_resnet.r160_in1k", state))
    model = create_model("timm:test_resnet.r160_in1k", num_classes=10, pretrained=True)
    got = model.state_dict()
    assert all(torch.equal(got[k], state[k]) for k in got if not k.startswith("fc."))
    assert got["fc.weight"].shape == (10, state["fc.weight"].shape[1])
    with pytest.raises(ConfigError, match="unknown timm model 'resnet_nope'"):
        create_model("timm:resnet_nope")
