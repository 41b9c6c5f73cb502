"""cifarlens.explain: layers, features, probes, projections, CAMs and their faithfulness, activation maximisation.

Two small models are trained once per module: the tutorial net on the synthetic CIFAR-10 (through
the trainer, as a user would), and a tiny GAP + linear net that detects a bright square anywhere
in an image (for CAM peaks that must follow the square).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SQUARE, SQUARE_SPEC, square_images, to_input
from PIL import Image
from safetensors import safe_open
from safetensors.numpy import load_file
from torch import nn
from typer.testing import CliRunner

from cifarlens.cli import app
from cifarlens.errors import CifarlensError
from cifarlens.explain import activation_max_run, cam_run, feature_maps_run, filters_run, layers_run, probe_run
from cifarlens.explain.activation_max import ActivationMaximiser, FourierImage
from cifarlens.explain.attribution import METHODS as ATTRIBUTION_METHODS
from cifarlens.explain.attribution import attribute_maps, hook_safe
from cifarlens.explain.cam import METHODS, CamExplainer, classic_cam_layers
from cifarlens.explain.dataset_examples import overlays, top_activations
from cifarlens.explain.faithfulness import DeletionInsertion
from cifarlens.explain.features import extract_features
from cifarlens.explain.images import ImageFileError, load_image_files
from cifarlens.explain.probe import fit_knn_probe, fit_linear_probe
from cifarlens.explain.projection import Projector, map_quality
from cifarlens.models import create_model, guess_capabilities, list_models, model_capabilities
from cifarlens.models.layers import (
    FeatureExtractor,
    LayerError,
    default_stages,
    default_target_layer,
    list_layers,
    map_size,
    pool_features,
)
from cifarlens.run import RunDir

pytestmark = pytest.mark.filterwarnings("ignore:.*differ from the official CIFAR-10 MD5")
runner = CliRunner()
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
    assert (
        default_stages(list_layers(airnet))
        == list(model_capabilities("airnet").probe_stages)
        == ["act", "blocks.block1.act2", "blocks.block2.act2", "blocks.block3.act2", "flatten"]
    )
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
        "features.relu1": (23, 6),
        "features.pool2": (23, 16),
        "classifier.relu1": (23, 120),
    }
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
    hits = [
        y <= np.unravel_index(m.argmax(), m.shape)[0] < y + SQUARE
        and x <= np.unravel_index(m.argmax(), m.shape)[1] < x + SQUARE
        for m, (y, x) in zip(maps, corners)
    ]
    return float(np.mean(hits))


@pytest.mark.parametrize("method", ["saliency", "integrated-gradients", "occlusion", "gradcam", "smoothgrad"])
def test_attribution_points_at_the_planted_square(square_net, method):
    """Ground truth from a planted signal: the class is decided by the square alone, wherever it is."""
    rng = np.random.default_rng(11)
    corners = [tuple(int(v) for v in rng.integers(0, 32 - SQUARE, size=2)) for _ in range(12)]
    x = torch.cat([to_input(square_images(1, rng, np.array([True]), at=c)) for c in corners])
    maps = attribute_maps(square_net, x, [1] * len(x), [method], mean=SQUARE_SPEC.mean, std=SQUARE_SPEC.std)[
        method
    ].maps
    chance = pointing_hits(np.random.default_rng(0).random(maps.shape), corners)
    assert pointing_hits(maps, corners) >= 0.75 > chance + 0.5, (method, pointing_hits(maps, corners), chance)


# timm's resnet10t at 64 px (as --image-size 64): at 32 px its last features are 1x1, where a CAM is one number
@pytest.mark.parametrize(
    "name, kwargs, size",
    [
        ("airnet", {"width": 8, "wide": 16}, 32),
        ("tutorial", {}, 32),
        ("resnet18", {}, 32),
        ("mobilenet_v2", {}, 32),
        ("timm:resnet10t", {}, 64),
    ],
)
def test_every_attribution_method_maps_every_pixel_of_real_architectures(name, kwargs, size):
    torch.manual_seed(0)
    x = torch.randn(2, 3, size, size)
    model = create_model(name, **kwargs).eval()
    caps = model_capabilities(name, model, image_size=size)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    methods = [m for m, method in ATTRIBUTION_METHODS.items() if method.applies_to(caps)]  # cam: GAP heads only
    assert ("cam" in methods) == (name in ("resnet18", "mobilenet_v2", "timm:resnet10t"))
    with torch.no_grad():  # the predicted class, as --target pred: an untrained net's other logits can be < 0
        predicted = model(x).argmax(1).tolist()  # everywhere, and then so is a CAM of them
    found = attribute_maps(model, x, predicted, methods, capabilities=caps)
    for method, result in found.items():
        assert result.maps.shape == (2, size, size) and np.isfinite(result.maps).all(), (name, method)
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
        start = maximiser.unit_activations(
            FourierImage(1, 32, torch.eye(3), generator=torch.Generator().manual_seed(0))()
        )
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
    assert (
        info["images"] == 100
        and info["trustworthiness_points"] == 80
        and (out / "projection/classifier.relu2_pca.png").is_file()
    )

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


# ----------------------------------------------------------------------------- the library behind the commands


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_probe_run_returns_the_accuracies_the_cli_writes(run_dir):
    layers = ["features.pool2", "classifier.relu2"]
    result = invoke("probe", run_dir, "--layers", ",".join(layers), "--train-limit", 200, "--device", "cpu")
    assert result.exit_code == 0, result.output
    written = read_csv(run_dir / "explain/probe/probe.csv")
    found = probe_run(run_dir, layers=layers, train_limit=200, device="cpu")
    assert (found.train_images, found.test_images, found.chance) == (200, 100, pytest.approx(0.1))
    assert [r["layer"] for r in found.rows] == layers == [r["layer"] for r in written]
    for row, line in zip(found.rows, written):  # same seed, same order of operations: the same numbers
        for key in ("linear_accuracy", "knn_accuracy"):
            assert row[key] == float(line[key]), key
    assert found.rows[-1]["dims"] == 84 and found.rows[-1]["linear_accuracy"] > found.chance + 0.4


def test_cam_run_maps_are_unit_range_per_image_and_explain_the_class_asked_for(run_dir, tmp_path):
    found = cam_run(run_dir, methods=["gradcam", "eigencam"], index="0-2", device="cpu")
    assert list(found.maps) == ["gradcam", "eigencam"] and found.images.shape == (3, 32, 32, 3)
    for maps in found.maps.values():  # each image's map is scaled to [0, 1] on its own
        assert maps.shape == (3, 32, 32) and maps.min() == 0
        np.testing.assert_allclose(maps.reshape(3, -1).max(1), 1, atol=1e-6)
    predicted = [found.classes[t] for t in found.targets]
    assert [r["explained_class"] for r in found.rows] == predicted * 2 and (found.probabilities > 0.5).all()
    paths = found.write(tmp_path)
    assert [p.name for p in paths] == ["gradcam_eigencam.png", "gradcam_eigencam.csv"]
    assert [float(r["deletion_auc"]) for r in read_csv(paths[1])] == [r["deletion_auc"] for r in found.rows]
    cat = cam_run(run_dir, methods=["gradcam"], index="0-2", target_class="cat", device="cpu")
    assert cat.targets == [3] * 3 and {r["explained_class"] for r in cat.rows} == {"cat"}
    assert np.abs(cat.maps["gradcam"] - found.maps["gradcam"]).max() > 0.5  # another class, another map
    with pytest.raises(CifarlensError, match="unknown class 'unicorn'; give a name or number: airplane"):
        cam_run(run_dir, index="0", target_class="unicorn")


def test_cli_layers_filters_and_cam_take_a_device_and_write_what_the_library_returns(run_dir):
    out = run_dir / "explain"
    assert invoke("layers", run_dir, "--device", "cpu").exit_code == 0
    layers = layers_run(run_dir, device="cpu")
    assert json.loads((out / "layers/layers.json").read_text())["layers"] == layers.rows
    assert (layers.cam_layer, layers.cam_map_size) == ("features.relu2", (10, 10))
    assert [r["name"] for r in layers.rows if r["stage"]][-1] == "classifier.relu2"

    assert invoke("filters", run_dir, "--layer", "features.conv2", "--max-filters", 4, "--device", "cpu").exit_code == 0
    filters = filters_run(run_dir, layer="features.conv2", max_filters=4, device="cpu")
    assert json.loads((out / "filters/features.conv2.json").read_text()) == {"layer": "features.conv2", **filters.stats}
    assert filters.tiles.shape == (4 * 6, 5, 5) and filters.columns == 6  # 4 filters x 6 input channels
    assert 1 <= filters.stats["effective_rank"] <= filters.stats["max_rank"] == 16

    result = invoke("cam", run_dir, "--index", "4", "--method", "eigencam", "--device", "cpu")
    assert result.exit_code == 0, result.output
    written = read_csv(out / "cam/eigencam.csv")
    row = cam_run(run_dir, methods=["eigencam"], index="4", device="cpu").rows[0]
    assert (written[0]["image"], float(written[0]["deletion_auc"])) == ("test4", row["deletion_auc"])
    assert_user_error(invoke("filters", run_dir, "--device", "tpu"), "unknown device 'tpu'; use --device auto, cpu")


def test_feature_maps_and_activation_max_runs_return_their_numbers(run_dir):
    seen = feature_maps_run(run_dir, index="3", layers=["features.relu2"], channels=4, device="cpu")
    maps = seen.maps["features.relu2"]
    assert maps.shape == (16, 10, 10) and seen.label == seen.predicted == "cat"
    assert seen.stats["features.relu2"]["active_fraction"] == pytest.approx(float((maps > 0).float().mean()))
    assert seen.stats["features.relu2"]["dead_channels"] == int((maps.flatten(1).amax(1) <= 0).sum())

    first = activation_max_run(run_dir, layer="features.relu2", channels="0,2", steps=3, device="cpu")
    again = activation_max_run(run_dir, layer="features.relu2", channels="0,2", steps=3, device="cpu")
    assert first.images.shape == (2, 32, 32, 3) and np.array_equal(first.images, again.images)  # seeded
    assert [r["unit"] for r in first.rows] == [0, 2] and first.real_images == 100
    for row in first.rows:
        assert row["ratio_to_best_real"] == pytest.approx(row["activation"] / row["best_real_activation"])
    with pytest.raises(CifarlensError, match="not both"):
        activation_max_run(run_dir, layer="features.relu2", classes="all")


# ----------------------------------------------------------------------------- top images (dataset examples)


class BrightnessNet(nn.Module):
    """A 5x5 conv whose channel 0 sums the brightness around each pixel (it fires on the planted square)
    and channel 1 the darkness; a linear head so the model classifies like any other."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 5, padding=2, bias=False)
        with torch.no_grad():
            self.conv.weight[0] = 1.0
            self.conv.weight[1] = -1.0
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(2 * 32 * 32, 2)

    def forward(self, x):
        return self.fc(self.flatten(self.conv(x)))


def test_top_images_are_the_planted_squares_and_the_overlay_peaks_on_them():
    images = square_images(40, np.random.default_rng(3), np.zeros(40, bool))
    corners = {7: (3, 20), 23: (20, 5)}
    for i, (y, x) in corners.items():
        images[i, :, y : y + SQUARE, x : x + SQUARE] = 255
    model = BrightnessNet().eval()
    found = top_activations(model, SQUARE_SPEC, images, "conv", [0, 1], k=3, batch_size=7)
    # both squares fill a 5x5 window with 255 (2.0 after normalising): the same score 3*25*2, kept in index order
    assert found.indices[0, :2].tolist() == [7, 23] and found.scores[0, :2].tolist() == [150.0, 150.0]
    maps = overlays(found, (32, 32))
    assert maps.shape == (2, 3, 32, 32) and maps.min() >= 0 and maps.max() == 1
    for rank, (y, x) in enumerate(corners.values()):
        py, px = np.unravel_index(maps[0, rank].argmax(), (32, 32))
        assert y <= py < y + SQUARE and x <= px < x + SQUARE, (rank, (py, px))
    with torch.no_grad():  # the running top k over batches of 7 is the top k of all 40 at once
        every = model.conv(to_input(images)).amax(dim=(2, 3)).T
    torch.testing.assert_close(found.scores, every.sort(dim=1, descending=True).values[:, :3])
    with pytest.raises(CifarlensError, match="--k 41 must be between 1 and the 40 images scanned"):
        top_activations(model, SQUARE_SPEC, images, "conv", [0], k=41)


def test_cli_top_images_writes_k_sorted_examples_per_channel(run_dir):
    result = invoke(
        "top-images", run_dir, "--layer", "features.relu2", "--channels", "0-2", "--k", 4, "--limit", 60, "--steps", 4
    )
    assert result.exit_code == 0, result.output
    out = run_dir / "explain/top-images"
    assert (out / "features.relu2.png").is_file() and "features.relu2 ch0: best" in result.output
    found = json.loads((out / "features.relu2.json").read_text())
    assert (found["layer"], found["k"], found["split"], found["images_scanned"]) == ("features.relu2", 4, "test", 60)
    assert [c["channel"] for c in found["channels"]] == [0, 1, 2]
    model, spec = RunDir(run_dir).load_model()
    test = RunDir(run_dir).load_data().test
    with torch.no_grad():
        maps = FeatureExtractor(model, ["features.relu2"])(spec.inputs(test.images[:60]))["features.relu2"]
    scores = maps.amax(dim=(2, 3))
    for c in found["channels"]:
        top = c["top"]
        assert len(top) == 4 and [t["score"] for t in top] == sorted((t["score"] for t in top), reverse=True)
        assert all(t["label"] == int(test.labels[t["index"]]) for t in top)
        expected = scores[:, c["channel"]].sort(descending=True).values[:4]
        np.testing.assert_allclose([t["score"] for t in top], expected.numpy(), rtol=1e-5)
        assert np.isfinite(c["optimised_activation"]) and np.isfinite(c["optimised_score"])


def test_cli_top_images_bad_layer_or_channel_is_one_line(run_dir):
    assert_user_error(
        invoke("top-images", run_dir, "--layer", "flatten"),
        "layer 'flatten' outputs (400,), not (C, H, W) maps; pick a layer with spatial maps: "
        "features.conv1, features.relu1",
    )
    assert_user_error(
        invoke("top-images", run_dir, "--layer", "features.relu2", "--channels", "3,99"),
        "channel 99 is out of range: features.relu2 has 16 channels (0-15)",
    )


def test_features_write_an_embedding_projector_log_tensorboard_reads(run_dir, tmp_path):
    result = invoke(
        "features", run_dir, "--layers", "classifier.relu2", "--limit", 40, "--tensorboard", tmp_path / "tb"
    )
    assert result.exit_code == 0, result.output
    config = next((tmp_path / "tb").rglob("projector_config.pbtxt")).read_text()
    assert "classifier.relu2" in config and "sprite" in config and "metadata_path" in config
    folder = next(p.parent for p in (tmp_path / "tb").rglob("metadata.tsv"))
    rows = (folder / "metadata.tsv").read_text().splitlines()
    assert rows[0] == "label\tprediction\tcorrect" and len(rows) == 41
    labels = RunDir(run_dir).load_data().test.labels[:40].tolist()
    classes = RunDir(run_dir).load_data().classes
    assert [r.split("\t")[0] for r in rows[1:]] == [classes[y] for y in labels]
    assert all(r.split("\t")[2] == str(r.split("\t")[0] == r.split("\t")[1]) for r in rows[1:])
    tensors = np.loadtxt(folder / "tensors.tsv", delimiter="\t")
    assert tensors.shape == (40, 84)
    with Image.open(folder / "sprite.png") as sprite:  # 40 thumbnails: a 7x7 grid of 32-pixel images
        assert sprite.size == (7 * 32, 7 * 32)
