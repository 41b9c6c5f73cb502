"""Calibration scores, temperature scaling, and the temperature carried into evaluate, predict and the ONNX graph."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_one_line_error, cifarlens
from torchmetrics.functional.classification import multiclass_calibration_error

from cifarlens.config import build_config
from cifarlens.evaluation.calibration import calibration_report, fit_temperature
from cifarlens.training import recipe_options, train
from cifarlens.training.config import TrainConfig


def random_logits(n: int = 4000, classes: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits that are right more often than chance, with labels: a model of known calibration."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=gen)
    logits = torch.randn(n, classes, generator=gen)
    logits[torch.arange(n), labels] += 1.5
    return logits, labels


def test_ece_mce_nll_and_brier_equal_independent_computations():
    logits, labels = random_logits()
    report = calibration_report(logits, labels)
    probs = logits.softmax(1)
    assert report["ece"] == pytest.approx(float(multiclass_calibration_error(probs, labels, 10, n_bins=15)), abs=1e-7)
    assert report["mce"] == pytest.approx(float(multiclass_calibration_error(probs, labels, 10, 15, "max")), abs=1e-7)
    from sklearn.metrics import log_loss

    exact = logits.double().softmax(1).numpy()
    assert report["nll"] == pytest.approx(log_loss(labels.numpy(), exact, labels=list(range(10))), rel=1e-5)
    one_hot = np.eye(10)[labels.numpy()]
    assert report["brier"] == pytest.approx(float(((probs.numpy() - one_hot) ** 2).sum(1).mean()), rel=1e-5)
    # the reliability bins give back the same ECE and MCE
    bins = [b for b in report["bins"] if b["count"]]
    ece = sum(b["count"] / len(labels) * abs(b["accuracy"] - b["confidence"]) for b in bins)
    assert ece == pytest.approx(report["ece"], abs=1e-5)
    assert max(abs(b["accuracy"] - b["confidence"]) for b in bins) == pytest.approx(report["mce"], abs=1e-5)
    assert sum(b["count"] for b in report["bins"]) == len(labels)


def test_risk_coverage_is_accuracy_on_the_most_confident_images():
    logits, labels = random_logits()
    curve = calibration_report(logits, labels)["coverage"]
    assert curve["coverage"][-1] == 1.0
    assert curve["accuracy"][-1] == pytest.approx(float((logits.argmax(1) == labels).float().mean()))
    assert curve["accuracy"][0] > curve["accuracy"][-1] + 0.1  # a model whose confidence means something
    confident = logits.softmax(1).max(1).values.argsort(descending=True)[: len(labels) // 20]
    assert curve["accuracy"][0] == pytest.approx(float((logits.argmax(1) == labels)[confident].float().mean()))


def test_temperature_scaling_undoes_over_confidence_and_keeps_the_accuracy():
    logits, labels = random_logits()
    over_confident = 4 * logits  # the same ranking, four times too sure
    temperature = fit_temperature(over_confident, labels)
    assert temperature == pytest.approx(4 * fit_temperature(logits, labels), rel=0.01)
    before = calibration_report(over_confident, labels)
    after = calibration_report(over_confident / temperature, labels)
    assert after["nll"] < before["nll"] - 0.5 and after["ece"] < before["ece"] / 3
    assert torch.equal((over_confident / temperature).argmax(1), over_confident.argmax(1))
    assert F.cross_entropy(over_confident / temperature, labels) <= F.cross_entropy(
        over_confident / (temperature * 1.05), labels
    )


@pytest.fixture(scope="module")
def held_out_run(cifar_root, tmp_path_factory):
    """The tutorial net, 3 epochs at a high learning rate on the synthetic data, 100 training images held out."""
    out = tmp_path_factory.mktemp("calibrate") / "run"
    options = {
        "model": "tutorial",
        "epochs": 3,
        "batch_size": 25,
        "optimizer": "sgd",
        "lr": 0.2,
        "schedule": "cosine",
        "augment": "none",
        "data_dir": str(cifar_root),
        "download": False,
        "out": str(out),
        "val_size": 100,
        "precision": "fp32",
        "evaluate": False,
        "channels_last": False,
        "threads": 1,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train(build_config(TrainConfig, recipe_options("seed"), options))
    return out


def test_calibrate_stores_a_temperature_that_evaluate_predict_and_the_onnx_graph_apply(held_out_run, cifar_root):
    from cifarlens.data import load_cifar10
    from cifarlens.deploy.predict import top_k
    from cifarlens.deploy.runtime import open_classifier
    from cifarlens.evaluation import evaluate_run
    from cifarlens.evaluation.calibrate import calibrate_run

    run = held_out_run
    result = cifarlens("calibrate", run, "--device", "cpu")
    assert result.returncode == 0, result.stderr
    stored = json.loads((run / "calibration.json").read_text())
    temperature = stored["temperature"]
    assert temperature > 0 and temperature != 1.0 and stored["fit"]["n"] == 50 and stored["held_out"]["n"] == 50
    held = stored["scores"]["val (other half)"]
    assert held["after"]["accuracy"] == held["before"]["accuracy"]
    assert stored["fit_nll"]["after"] <= stored["fit_nll"]["before"]
    assert "test" in stored["scores"] and f"temperature {temperature:.4f}" in result.stdout

    summary = evaluate_run(run, split="val")["calibration"]
    assert summary["temperature"] == temperature and "ece" in summary["calibrated"]
    for plot in ("reliability_val", "confidence_val", "coverage_val"):
        assert (run / "plots" / f"{plot}.png").stat().st_size > 1000

    images = load_cifar10(cifar_root).test.images[:8]
    calibrated = open_classifier(run)
    raw = calibrated.predictor.logits(images)
    torch.testing.assert_close(torch.from_numpy(calibrated.logits(images.numpy())), raw / temperature)

    result = cifarlens("export", run, "--calibration-images", "20")
    assert result.returncode == 0, result.stderr
    assert json.loads((run / "export" / "model.json").read_text())["temperature"] == temperature
    graph = open_classifier(run / "export" / "model.onnx")
    for backend in (graph, open_classifier(run, backend="onnxruntime")):  # predict's and serve's top-k, from the graph
        for ours, theirs in zip(top_k(calibrated, images.numpy(), 10), top_k(backend, images.numpy(), 10)):
            assert [c for c, _ in ours] == [c for c, _ in theirs]
            np.testing.assert_allclose([p for _, p in ours], [p for _, p in theirs], atol=1e-5)
    assert top_k(calibrated, images.numpy(), 1)[0][0][1] == pytest.approx(
        float((raw / temperature).softmax(1)[0].max())
    )

    # calibrated again later: the graph exported before refuses to serve the old temperature, the old fit is kept
    stored["temperature"] = temperature * 2
    (run / "calibration.json").write_text(json.dumps(stored))
    from PIL import Image

    Image.fromarray(images[0].permute(1, 2, 0).numpy()).save(run / "one.png")
    assert_one_line_error(cifarlens("predict", run, run / "one.png", "--backend", "onnxruntime"), "export it again")
    again = calibrate_run(run, seed=1)
    assert again["seed"] == 1 and again["history"][-1]["temperature"] == temperature * 2


def test_calibrate_without_a_held_out_split_is_one_line(held_out_run, tmp_path):
    import shutil

    import yaml

    run = tmp_path / "no-val"  # the run as if trained without --val-size
    shutil.copytree(held_out_run, run, ignore=shutil.ignore_patterns("checkpoint", "export"))
    config = yaml.safe_load((run / "config.yaml").read_text()) | {"val_size": 0}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    assert_one_line_error(cifarlens("calibrate", run, "--device", "cpu"), "no held-out split", "--val-size")
