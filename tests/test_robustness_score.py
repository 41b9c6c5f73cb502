"""``cifarlens robustness``: the numbers it writes are the model's accuracy on the corrupted images, seeded,
compared with a baseline by Hendrycks's formulas, and the published CIFAR-10-C files score the same way."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, cifarlens

from cifarlens.data import load_cifar10
from cifarlens.deploy.runtime import open_classifier
from cifarlens.errors import ConfigError, DataError
from cifarlens.robustness import corrupt
from cifarlens.robustness.config import RobustnessConfig
from cifarlens.robustness.score import robustness_run

ARGS = ("--corruptions", "gaussian_noise,contrast,saturate", "--severities", "1,5", "--split", "test")
SETTING = {"corruptions": "gaussian_noise,contrast,saturate", "severities": "1,5", "split": "test"}


def score(run, **options) -> dict:
    """``cifarlens robustness`` as a library call (the command line is tested once, in ``scored``)."""
    return robustness_run(RobustnessConfig(run=str(run), **(SETTING | options)))


@pytest.fixture(scope="module")
def scored(run_dir):
    result = cifarlens("robustness", run_dir, *ARGS, "--seed", "3")
    assert result.returncode == 0, result.stderr
    return json.loads((run_dir / "robustness" / "test_seed3" / "robustness.json").read_text()), result


def test_robustness_scores_the_corrupted_images_and_writes_every_file(run_dir, cifar_root, scored):
    numbers, result = scored
    test = load_cifar10(cifar_root).test
    classifier = open_classifier(run_dir)
    for cell in numbers["cells"]:
        images = corrupt(test.images, cell["corruption"], cell["severity"], seed=3)
        predicted = classifier.logits(images.numpy()).argmax(1)
        assert cell["accuracy"] == pytest.approx(float((predicted == test.labels.numpy()).mean()))
    bench = [c["accuracy"] for c in numbers["cells"] if c["benchmark"]]
    assert numbers["mean_corruption_accuracy"] == pytest.approx(np.mean(bench))
    assert numbers["benchmark_corruptions"] == 2 and not numbers["benchmark_complete"]
    assert numbers["extra_mean_accuracy"] == pytest.approx(
        np.mean([c["accuracy"] for c in numbers["cells"] if not c["benchmark"]])
    )
    assert set(numbers["ece_by_severity"]) == {"1", "5"}
    assert "the test split" in result.stdout and "not the whole benchmark" in result.stdout
    folder = run_dir / "robustness" / "test_seed3"
    for name in ("accuracy.csv", "robustness.md", "per_class_drop.csv", "predictions.npz", "severity.png", "grid.png"):
        assert (folder / name).stat().st_size > 100, name
    saved = np.load(folder / "predictions.npz")
    assert list(saved["cells"]) == [
        "gaussian_noise/1",
        "gaussian_noise/5",
        "contrast/1",
        "contrast/5",
        "saturate/1",
        "saturate/5",
    ]
    flips = ((saved["clean"] == saved["labels"]) & (saved["predictions"][1] != saved["labels"])).sum()
    assert flips == numbers["cells"][1]["flipped"]
    assert "| contrast | digital |" in (folder / "robustness.md").read_text()


def test_the_same_seed_gives_the_same_numbers_another_seed_other_noise(run_dir, scored):
    numbers, _ = scored
    redo = score(run_dir, seed=3, corruptions="gaussian_noise")
    assert [c["accuracy"] for c in redo["cells"]] == [c["accuracy"] for c in numbers["cells"][:2]]


def test_baseline_gives_hendrycks_corruption_errors(run_dir, tmp_path, scored):
    import shutil

    from cifarlens.run import RunDir

    numbers, _ = scored
    baseline = tmp_path / "baseline"  # another model: the run with seeded noise on every weight
    shutil.copytree(run_dir, baseline, ignore=shutil.ignore_patterns("robustness", "checkpoint"))
    model, spec = RunDir(baseline).load_model()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.8 * p.std().nan_to_num() * torch.randn(p.shape, generator=gen))
    RunDir(baseline).save_model(model, spec)
    mine = score(run_dir, seed=3, baseline=str(baseline))
    theirs = json.loads((baseline / "robustness" / "test_seed3" / "robustness.json").read_text())
    ces = []
    for name in ("gaussian_noise", "contrast"):
        err = [1 - c["accuracy"] for c in mine["cells"] if c["corruption"] == name]
        base_err = [1 - c["accuracy"] for c in theirs["cells"] if c["corruption"] == name]
        clean, base_clean = 1 - mine["clean"]["accuracy"], 1 - theirs["clean"]["accuracy"]
        ce = mine["baseline"]["corruptions"][name]
        assert ce["ce"] == pytest.approx(100 * sum(err) / sum(base_err))
        ces.append(ce["ce"])
        if sum(e - base_clean for e in base_err) > 0:
            assert ce["relative_ce"] == pytest.approx(
                100 * sum(e - clean for e in err) / sum(e - base_clean for e in base_err)
            )
    assert mine["baseline"]["mce"] == pytest.approx(np.mean(ces)) and mine["baseline"]["over"] == 2


def test_published_cifar10c_files_score_like_the_generated_corruptions(run_dir, cifar_root, tmp_path, scored):
    numbers, _ = scored
    test = load_cifar10(cifar_root).test
    for name in ("gaussian_noise", "contrast", "saturate"):
        blocks = [corrupt(test.images, name, s, seed=3).permute(0, 2, 3, 1).numpy() for s in range(1, 6)]
        np.save(tmp_path / f"{name}.npy", np.concatenate(blocks))
    np.save(tmp_path / "labels.npy", np.tile(test.labels.numpy().astype(np.uint8), 5))
    published = score(run_dir, cifar10c_dir=str(tmp_path))
    assert published["key"] == "test_seed0_cifar10c"
    assert [c["accuracy"] for c in published["cells"]] == [c["accuracy"] for c in numbers["cells"]]
    (tmp_path / "contrast.npy").unlink()
    with pytest.raises(DataError, match="contrast.npy is missing"):
        score(run_dir, cifar10c_dir=str(tmp_path))


def test_unknown_corruption_or_severity_is_one_line_naming_the_valid_ones(run_dir):
    assert_one_line_error(
        cifarlens("robustness", run_dir, "--corruptions", "fogg"),
        "unknown corruption fogg",
        "gaussian_noise, shot_noise",
    )
    assert_one_line_error(cifarlens("robustness", run_dir, "--severities", "0-6"), "outside 1-5", "1, 2, 3, 4, 5")
    with pytest.raises(ConfigError, match="no validation split"):
        score(run_dir, split="val")
