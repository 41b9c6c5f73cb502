"""cifarlens.explain: layers, features, probes, projections, CAMs and their faithfulness, activation maximisation.

Two small models are trained once per module: the tutorial net on the synthetic CIFAR-10 (through
the trainer, as a user would), and a tiny GAP + linear net that detects a bright square anywhere
in an image (for CAM peaks that must follow the square).
"""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.numpy import load_file
from torch import nn
from typer.testing import CliRunner

from cifarlens.cli import app
from cifarlens.config import build_config
from cifarlens.errors import CifarlensError
from cifarlens.explain.activation_max import ActivationMaximiser, FourierImage
from cifarlens.explain.cam import METHODS, CamExplainer, classic_cam_layers
from cifarlens.explain.attribution import METHODS as ATTRIBUTION_METHODS
from cifarlens.explain.attribution import attribute_maps, hook_safe
from cifarlens.explain.faithfulness import DeletionInsertion
from cifarlens.explain.features import extract_features
from cifarlens.explain.images import ImageFileError, load_image_files
from cifarlens.models.layers import (
    FeatureExtractor,
    LayerError,
    default_stages,
    default_target_layer,
    list_layers,
    map_size,
    pool_features,
)
from cifarlens.explain.probe import fit_knn_probe, fit_linear_probe
from cifarlens.explain.projection import Projector, map_quality
from cifarlens.models import create_model, guess_capabilities, list_models, model_capabilities
from cifarlens.run import ModelSpec, RunDir
from cifarlens.training import TrainConfig, recipe_options, train

pytestmark = pytest.mark.filterwarnings("ignore:.*differ from the official CIFAR-10 MD5")
runner = CliRunner()
SQUARE = 6  # side of the planted square


@pytest.fixture(scope="module")
def run_dir(cifar_root, tmp_path_factory):
    """The tutorial net trained for 2 epochs on the synthetic CIFAR-10 (500 train, 100 test images)."""
    out = tmp_path_factory.mktemp("explain") / "tutorial"
    options = {
        "model": "tutorial", "epochs": 2, "batch_size": 25, "optimizer": "sgd", "lr": 0.05, "schedule": "cosine",
        "augment": "flip", "data_dir": str(cifar_root), "download": False, "out": str(out), "precision": "fp32",
        "evaluate": False, "channels_last": False, "threads": 1,
    }  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train(build_config(TrainConfig, recipe_options("seed"), options))
    return out


def square_images(n: int, rng: np.random.Generator, with_square: np.ndarray, at=None) -> torch.Tensor:
    """uint8 (n, 3, 32, 32) dim noise; a bright SQUARE x SQUARE square where ``with_square``, at ``at`` or at random."""
    images = rng.integers(0, 90, size=(n, 3, 32, 32)).astype(np.uint8)
    for i in np.flatnonzero(with_square):
        y, x = at if at is not None else rng.integers(0, 32 - SQUARE, size=2)
        images[i, :, y : y + SQUARE, x : x + SQUARE] = 255
    return torch.from_numpy(images)


class SquareNet(nn.Module):
    """conv-relu-pool-conv-relu, global average pool, linear: the shape the original CAM needs."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU()
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(16, 2)

    def forward(self, x):
        return self.fc(self.flatten(self.pool(self.features(x))))


SQUARE_SPEC = ModelSpec("square", {}, 2, ("empty", "square"), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def to_input(images: torch.Tensor) -> torch.Tensor:
    from cifarlens.explain.images import model_input

    return model_input(images, SQUARE_SPEC)


@pytest.fixture(scope="module")
def square_net():
    """SquareNet trained to tell images with a bright square (class 1) from images without (class 0)."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    labels = np.arange(512) % 2
    x, y = to_input(square_images(512, rng, labels == 1)), torch.from_numpy(labels)
    model = SquareNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with torch.random.fork_rng():
        for step in range(150):
            idx = torch.randint(0, 512, (32,))
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    test = np.arange(200) % 2
    xt = to_input(square_images(200, np.random.default_rng(1), test == 1))
    with torch.no_grad():
        acc = (model(xt).argmax(1).numpy() == test).mean()
    assert acc > 0.95, f"the square detector did not learn ({acc:.0%})"
    return model


# ----------------------------------------------------------------------------- layers and features


def test_every_registered_model_has_layers_stages_and_a_cam_target():
    for name in list_models():
        model = create_model(name).eval()
        infos = list_layers(model)
        names = [i.name for i in infos]
        assert len(names) == len(set(names)) and all(i.shape for i in infos), name
        stages = default_stages(infos)
        assert len(stages) >= 3 and set(stages) <= set(names), (name, stages)
        target = default_target_layer(model)
        x = torch.randn(2, 3, 32, 32)
        maps = CamExplainer(model, "gradcam", target_layer=target)(x, [0, 1])
        assert maps.shape == (2, 32, 32) and maps.dtype == np.float32, name
        assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1 + 1e-6, name


def test_every_registered_model_maps_cams_at_7x7_or_finer():
    for name in list_models():
        model = create_model(name).eval()
        assert min(map_size(model, model_capabilities(name).cam_layer)) >= 7, name


def test_guessed_layers_of_known_architectures_match_their_declarations():
    """What ``guess_capabilities`` reads off a model (the fallback for timm models) agrees with what
    resnet18 and airnet declare, so the guesser is right where it can be checked."""
    resnet = create_model("resnet18").eval()
    guessed, declared = guess_capabilities(resnet), model_capabilities("resnet18")
    # the last stage with CAMs of at least 7x7 at 32 px: layer3 (8x8), not layer4 (4x4) nor a ReLU called twice
    assert default_target_layer(resnet) == guessed.cam_layer == declared.cam_layer == "layer3"
    assert map_size(resnet, "layer3") == (8, 8) and map_size(resnet, "layer4") == (4, 4)
    assert guessed.gap_features == declared.gap_features == "layer4"  # the original CAM needs the pooled layer
    assert classic_cam_layers(resnet, declared)[1] is resnet.fc
    airnet = create_model("airnet", width=8, wide=16).eval()
    assert default_stages(list_layers(airnet)) == list(model_capabilities("airnet").probe_stages) == [
        "act", "blocks.block1.act2", "blocks.block2.act2", "blocks.block3.act2", "flatten"
    ]  # fmt: skip
    assert guess_capabilities(airnet).gap_features is None
    with pytest.raises(CifarlensError, match="global-average-pool"):
        classic_cam_layers(airnet, model_capabilities("airnet"))  # max pooling and scaled logits: a clear refusal


def test_unknown_layer_lists_the_valid_ones_and_unpoolable_output_says_so():
    model = create_model("tutorial")
    with pytest.raises(LayerError, match=r"unknown layer 'nope'.*valid layers: features\.conv1, features\.relu1"):
        FeatureExtractor(model, ["nope"])
    with pytest.raises(LayerError, match="cannot be pooled"):
        pool_features(torch.zeros(2, 3, 4), "odd")
    assert pool_features(torch.ones(2, 5, 3, 3), "x").shape == (2, 5)
    assert pool_features(torch.ones(2, 7), "x").shape == (2, 7)


def test_features_are_pooled_batched_and_round_trip(run_dir, tmp_path):
    model, spec = RunDir(run_dir).load_model()
    images = torch.randint(0, 256, (23, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(23) % 10
    layers = ["features.relu1", "features.pool2", "classifier.relu1"]
    small = extract_features(model, spec, images, labels, layers, batch_size=4)
    whole = extract_features(model, spec, images, labels, layers, batch_size=500)
    assert {k: v.shape for k, v in small.layers.items()} == {
        "features.relu1": (23, 6), "features.pool2": (23, 16), "classifier.relu1": (23, 120)
    }  # fmt: skip
    for name in layers:
        # oneDNN picks kernels by batch size, so sums run in another order: equal to float32 rounding
        np.testing.assert_allclose(small.layers[name], whole.layers[name], rtol=1e-4, atol=1e-5)
    small.save(tmp_path / "f.safetensors")  # readable by plain safetensors, as a user would read it
    with safe_open(str(tmp_path / "f.safetensors"), framework="np") as f:
        assert json.loads(f.metadata()["layers"]) == layers
    back = load_file(str(tmp_path / "f.safetensors"))
    assert np.array_equal(back["__labels__"], labels.numpy())
    np.testing.assert_array_equal(back["features.pool2"], small.layers["features.pool2"])


# ----------------------------------------------------------------------------- probes and projections


def test_linear_and_knn_probes_separate_blobs_and_fail_on_noise():
    rng = np.random.default_rng(0)
    y = np.arange(600) % 3
    x = rng.normal(size=(600, 8)) + 4 * np.eye(3, 8)[y]
    assert fit_linear_probe(x[:400], y[:400], x[400:], y[400:]).accuracy > 0.95
    assert fit_knn_probe(x[:400], y[:400], x[400:], y[400:]).accuracy > 0.95
    noise = rng.normal(size=(600, 8))
    assert fit_linear_probe(noise[:400], y[:400], noise[400:], y[400:]).accuracy < 0.5


def test_probe_on_the_trained_run_beats_chance_by_a_margin(run_dir):
    result = runner.invoke(app, ["explain", "probe", str(run_dir), "--train-limit", "300"])
    assert result.exit_code == 0, result.output
    probe = json.loads((run_dir / "explain/probe/probe.json").read_text())
    assert (run_dir / "explain/probe/probe.png").is_file() and (run_dir / "explain/probe/probe.csv").is_file()
    stages = {row["layer"]: row for row in probe["stages"]}
    assert list(stages)[-1] == "classifier.relu2"
    assert probe["chance"] == pytest.approx(0.1)
    assert stages["classifier.relu2"]["linear_accuracy"] > probe["chance"] + 0.4
    assert stages["classifier.relu2"]["knn_accuracy"] > probe["chance"] + 0.4


@pytest.mark.parametrize("method", ["pca", "tsne", "umap"])
def test_projections_are_reproducible_with_a_seed(method):
    rng = np.random.default_rng(0)
    y = np.arange(150) % 3
    x = (rng.normal(size=(150, 60)) + 6 * np.eye(3, 60)[y]).astype(np.float32)
    first = Projector(method, seed=1, n_jobs=1)(x)
    again = Projector(method, seed=1, n_jobs=1)(x)
    assert first.points.shape == (150, 2)
    np.testing.assert_array_equal(first.points, again.points)
    if method != "pca":  # PCA has no randomness to seed
        assert not np.allclose(first.points, Projector(method, seed=2, n_jobs=1)(x).points)
    quality = map_quality(x, first.points, y, sample=100, seed=0)
    assert quality["trustworthiness_points"] == 100
    assert quality["knn_accuracy_features"] > 0.9 and 0 <= quality["trustworthiness"] <= 1


# ----------------------------------------------------------------------------- CAM and faithfulness


# EigenCAM is left out: it shows the first principal component of the activations whatever the
# class, and on this net that component's sign puts the peak on the background.
@pytest.mark.parametrize("method", [m for m in METHODS if m != "eigencam"])
def test_cam_peak_follows_the_planted_square(square_net, method):
    rng = np.random.default_rng(5)
    for y, x in ((3, 4), (22, 21), (5, 23)):
        image = to_input(square_images(1, rng, np.array([True]), at=(y, x)))
        heat = CamExplainer(square_net, method)(image, [1])[0]
        py, px = np.unravel_index(heat.argmax(), heat.shape)
        assert y - 3 <= py < y + SQUARE + 3 and x - 3 <= px < x + SQUARE + 3, (method, (y, x), (py, px))


def test_deletion_of_salient_pixels_hurts_more_than_random(square_net):
    rng = np.random.default_rng(6)
    x = to_input(square_images(8, rng, np.ones(8, bool)))
    cams = CamExplainer(square_net, "gradcam")(x, [1] * 8)
    metric = DeletionInsertion(square_net, steps=8)
    faithful = metric(x, cams, [1] * 8).auc()
    random = metric(x, rng.random(cams.shape), [1] * 8).auc()
    assert faithful["deletion_auc"] < random["deletion_auc"] - 0.1
    # the blurred start image still shows a bright blob, so insertion starts high for any map
    assert faithful["insertion_auc"] > random["insertion_auc"]


# ----------------------------------------------------------------------------- attribution methods


def pointing_hits(maps: np.ndarray, corners: list[tuple[int, int]]) -> float:
    """Share of maps whose most-attributed pixel lies in the planted square (the pointing game)."""
    hits = [y <= np.unravel_index(m.argmax(), m.shape)[0] < y + SQUARE and x <= np.unravel_index(m.argmax(), m.shape)[1] < x + SQUARE
            for m, (y, x) in zip(maps, corners)]  # fmt: skip
    return float(np.mean(hits))


@pytest.mark.parametrize("method", ["saliency", "integrated-gradients", "occlusion", "gradcam", "smoothgrad"])
def test_attribution_points_at_the_planted_square(square_net, method):
    """Ground truth from a planted signal: the class is decided by the square alone, wherever it is."""
    rng = np.random.default_rng(11)
    corners = [tuple(int(v) for v in rng.integers(0, 32 - SQUARE, size=2)) for _ in range(12)]
    x = torch.cat([to_input(square_images(1, rng, np.array([True]), at=c)) for c in corners])
    maps = attribute_maps(square_net, x, [1] * len(x), [method], mean=SQUARE_SPEC.mean, std=SQUARE_SPEC.std)[method].maps
    chance = pointing_hits(np.random.default_rng(0).random(maps.shape), corners)
    assert pointing_hits(maps, corners) >= 0.75 > chance + 0.5, (method, pointing_hits(maps, corners), chance)


def test_every_attribution_method_maps_every_pixel_of_real_architectures():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    for name, kwargs in (("airnet", {"width": 8, "wide": 16}), ("tutorial", {}), ("resnet18", {})):
        model = create_model(name, **kwargs).eval()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        methods = [m for m in ATTRIBUTION_METHODS if not (m == "cam" and name != "resnet18")]  # cam: GAP heads only
        found = attribute_maps(model, x, [1, 2], methods, capabilities=model_capabilities(name))
        for method, result in found.items():
            assert result.maps.shape == (2, 32, 32) and np.isfinite(result.maps).all(), (name, method)
            assert result.maps.min() >= 0 and result.maps.max() > 0, (name, method)
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the run's model untouched


def test_hook_safe_unshares_a_relu_called_twice_and_keeps_the_function():
    model = create_model("resnet18").eval()
    safe = hook_safe(model)
    calls = [n.target for n in safe.graph.nodes if n.op == "call_module"]
    assert len(calls) == len(set(calls)) and not any(getattr(m, "inplace", False) for m in safe.modules())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(safe(x), model(x))


def test_the_readme_lists_every_attribution_method_as_the_registry_does():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for method in ATTRIBUTION_METHODS.values():
        assert f"| `{method.name}` | {method.library} | {method.summary} |" in readme, method.name


def test_unknown_attribution_method_and_baseline_are_named():
    model = create_model("tutorial").eval()
    with pytest.raises(CifarlensError, match="unknown attribution method magic; choose from: saliency"):
        attribute_maps(model, torch.zeros(1, 3, 32, 32), [0], ["magic"])
    with pytest.raises(CifarlensError, match="unknown baseline 'grey'; choose one of: black, blur, mean"):
        attribute_maps(model, torch.zeros(1, 3, 32, 32), [0], ["saliency"], baseline="grey")


# ----------------------------------------------------------------------------- activation maximisation


def test_activation_max_beats_real_images_and_is_seeded(square_net):
    maximiser = ActivationMaximiser(square_net, SQUARE_SPEC, "logits", steps=48, lr=0.05, seed=0)
    result = maximiser([1])
    assert result.images.shape == (1, 3, 32, 32) and 0 <= result.images.min() and result.images.max() <= 1
    real = square_images(64, np.random.default_rng(7), np.ones(64, bool)).float() / 255
    with torch.no_grad():
        real_logits = maximiser.unit_activations(real)[:, 1]
        start = maximiser.unit_activations(FourierImage(1, 32, torch.eye(3), generator=torch.Generator().manual_seed(0))())
    assert result.activations[0] > real_logits.median() and result.activations[0] > start[0, 1] + 1
    again = ActivationMaximiser(square_net, SQUARE_SPEC, "logits", steps=48, lr=0.05, seed=0)([1])
    torch.testing.assert_close(result.images, again.images)


# ----------------------------------------------------------------------------- the CLI on a run


def test_image_files_load_and_a_non_image_is_one_clear_error(tmp_path):
    Image.new("RGB", (50, 40), (200, 10, 10)).save(tmp_path / "red.png")
    (tmp_path / "notes.png").write_text("not an image")
    images = load_image_files([tmp_path / "red.png"])
    assert images.shape == (1, 3, 32, 32) and images.dtype == torch.uint8 and images[0, 0].float().mean() > 190
    with pytest.raises(ImageFileError, match="notes.png: not an image"):
        load_image_files([tmp_path / "notes.png"])


def invoke(*args):
    return runner.invoke(app, ["explain", *map(str, args)])


def assert_user_error(result, fragment):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and fragment in result.output.replace("\n", " "), result.output


def test_cli_commands_write_pictures_and_numbers(run_dir, tmp_path):
    out = run_dir / "explain"
    assert invoke("layers", run_dir).exit_code == 0
    layers = json.loads((out / "layers/layers.json").read_text())
    assert (layers["default_cam_target"], layers["default_cam_map_size"]) == ("features.relu2", [10, 10])

    result = invoke("features", run_dir, "--layers", "features.pool2,classifier.relu2", "--limit", 50)
    assert result.exit_code == 0, result.output
    feats = load_file(str(out / "features/test.safetensors"))
    assert feats["classifier.relu2"].shape == (50, 84) and feats["__labels__"].shape == (50,)

    result = invoke("projection", run_dir, "--method", "pca", "--sample", 80, "--thumbnails", 5)
    assert result.exit_code == 0, result.output
    info = json.loads((out / "projection/classifier.relu2_pca.json").read_text())
    assert info["images"] == 100 and info["trustworthiness_points"] == 80 and (out / "projection/classifier.relu2_pca.png").is_file()

    assert invoke("filters", run_dir).exit_code == 0
    assert json.loads((out / "filters/features.conv1.json").read_text())["filters"] == 6
    assert invoke("filters", run_dir, "--layer", "features.conv2").exit_code == 0

    Image.new("RGB", (64, 64), (10, 200, 10)).save(tmp_path / "green.png")
    result = invoke("feature-maps", run_dir, tmp_path / "green.png")
    assert result.exit_code == 0, result.output
    maps = json.loads((out / "feature-maps/green.png.json").read_text())
    assert maps["layers"]["features.relu1"]["size"] == [28, 28]

    result = invoke("cam", run_dir, "--index", "0-2", "--method", "gradcam,eigencam")
    assert result.exit_code == 0, result.output
    assert (out / "cam/gradcam_eigencam.png").is_file()
    assert (out / "cam/gradcam_eigencam.csv").read_text().count("\n") == 1 + 3 * 2
    assert "features.relu2,10x10," in (out / "cam/gradcam_eigencam.csv").read_text()  # the layer and its map size

    result = invoke("attribute", run_dir, "--index", "0-1", "--method", "saliency,deeplift,gradcam", "--target", "true")
    assert result.exit_code == 0, result.output
    stem = out / "attribute/saliency_deeplift_gradcam"
    assert stem.with_suffix(".png").is_file()
    maps = load_file(str(stem.with_suffix(".safetensors")))
    assert maps["gradcam.map"].shape == (2, 32, 32) and maps["deeplift.raw"].shape == (2, 3, 32, 32)
    with open(stem.with_suffix(".csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows] == ["saliency"] * 2 + ["deeplift"] * 2 + ["gradcam"] * 2
    assert all(r["explained_class"] == r["label"] and 0 <= float(r["deletion_auc"]) <= 1 for r in rows)
    result = invoke("compare-cam", run_dir, "--methods", "gradcam,layercam", "--n", 6, "--steps", 4)
    assert result.exit_code == 0, result.output
    compare = json.loads((out / "compare-cam/compare.json").read_text())
    assert {r["method"] for r in compare["methods"]} == {"gradcam", "layercam", "random"}

    result = invoke("activation-max", run_dir, "--layer", "features.relu2", "--channels", "0-3", "--steps", 6)
    assert result.exit_code == 0, result.output
    units = json.loads((out / "activation-max/features.relu2.json").read_text())["units"]
    assert [u["unit"] for u in units] == [0, 1, 2, 3]


def test_cli_bad_input_is_one_line(run_dir, tmp_path):
    (tmp_path / "data.png").write_bytes(b"\x00" * 100)
    assert_user_error(invoke("features", run_dir, "--layers", "nope"), "valid layers: features.conv1")
    assert_user_error(invoke("cam", run_dir, tmp_path / "data.png"), "data.png: not an image")
    assert_user_error(invoke("cam", run_dir, "--method", "cam"), "global-average-pool")
    assert_user_error(invoke("cam", run_dir, "--method", "magic"), "unknown CAM method 'magic'")
    assert_user_error(invoke("attribute", run_dir, "--method", "saliency,magic"), "unknown attribution method magic")
    Image.new("RGB", (40, 30), "gray").save(tmp_path / "x.png")
    assert_user_error(invoke("attribute", run_dir, tmp_path / "x.png", "--target", "true"), "--target true needs")
    assert_user_error(invoke("filters", run_dir, "--layer", "flatten"), "conv layers: features.conv1")
    assert_user_error(invoke("projection", run_dir, "--method", "mds"), "choose one of: pca, tsne, umap")
    assert_user_error(invoke("feature-maps", run_dir, "--index", "5000"), "out of range")
    assert_user_error(invoke("layers", tmp_path), "not a cifarlens run directory")
