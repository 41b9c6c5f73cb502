"""cifarlens.evaluation: metrics, prediction with TTA, plots and evaluate_run on a tiny synthetic run."""

from __future__ import annotations

import csv
import json
import pickle

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch import nn

from cifarlens import run as rundir
from cifarlens.errors import CifarlensError, ConfigError, RunDirError
from cifarlens.evaluation import (
    classification_report,
    evaluate_run,
    image_grid,
    plot_confusion,
    plot_curves,
    plot_misclassified,
    top_confusions,
)
from cifarlens.evaluation import plots as plots_mod
from cifarlens.run import ModelSpec, Predictor, tta_logits

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# the synthetic CIFAR files differ from the official MD5 sums on purpose
pytestmark = pytest.mark.filterwarnings("ignore:.*differ from the official CIFAR-10 MD5")


def assert_png(path, min_size=(50, 50)):
    assert path.is_file()
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.size[0] >= min_size[0] and img.size[1] >= min_size[1]
        return img.size


def one_hot_logits(preds, c=3, scale=5.0):
    return torch.nn.functional.one_hot(torch.tensor(preds), c).float() * scale


# ----------------------------------------------------------------------------- metrics


def test_report_accuracy_confusion_and_class_scores():
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    preds = [0, 0, 1, 1, 2, 2]
    rep = classification_report(one_hot_logits(preds), labels, ["a", "b", "c"])
    assert rep["n"] == 6
    assert rep["accuracy"] == pytest.approx(4 / 6)
    assert rep["confusion"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    b = rep["per_class"][1]
    assert b["class"] == "b" and b["support"] == 2
    assert b["precision"] == pytest.approx(1 / 2)  # predicted b twice, once right
    assert b["recall"] == pytest.approx(1 / 2) == b["accuracy"]
    assert b["f1"] == pytest.approx(1 / 2)
    assert rep["per_class"][0]["precision"] == pytest.approx(1.0)
    assert rep["per_class"][0]["recall"] == pytest.approx(2 / 3)
    expected_loss = torch.nn.functional.cross_entropy(one_hot_logits(preds), labels).item()
    assert rep["loss"] == pytest.approx(expected_loss)
    json.dumps(rep)  # plain Python values only


def test_report_keeps_rows_for_absent_classes():
    labels = torch.tensor([0, 0, 1])
    rep = classification_report(one_hot_logits([0, 1, 1], c=4), labels, ["a", "b", "c", "d"])
    assert len(rep["confusion"]) == 4 and all(len(r) == 4 for r in rep["confusion"])
    assert rep["confusion"][2] == [0, 0, 0, 0] and rep["confusion"][3] == [0, 0, 0, 0]
    for row in rep["per_class"][2:]:
        assert row["support"] == 0 and row["precision"] == row["recall"] == row["f1"] == 0.0


def test_report_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        classification_report(torch.zeros(3, 2), torch.zeros(3, dtype=torch.long), ["a", "b", "c"])
    with pytest.raises(ValueError):
        classification_report(torch.zeros(3, 2), torch.zeros(2, dtype=torch.long), ["a", "b"])


def test_top_confusions_order_and_fraction():
    cm = [[5, 3, 0], [1, 4, 0], [0, 6, 2]]
    top = top_confusions(cm, ["a", "b", "c"], k=2)
    assert [(t["true"], t["pred"], t["count"]) for t in top] == [("c", "b", 6), ("a", "b", 3)]
    assert top[0]["fraction"] == pytest.approx(6 / 8)
    assert len(top_confusions(cm, ["a", "b", "c"], k=10)) == 3  # zero cells are left out
    assert top_confusions([[3, 0], [0, 2]], ["a", "b"]) == []


# ----------------------------------------------------------------------------- predict


def random_images(n, seed=0):
    return torch.randint(0, 256, (n, 3, 32, 32), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def flip_invariant_model(c=4):
    torch.manual_seed(0)
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, c))


def position_model(c=4):
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, c))


def predictor(model, **options) -> Predictor:
    """A Predictor that feeds ``model`` 32x32 images normalised with MEAN and STD."""
    return Predictor(model, ModelSpec("test", {}, 4, CLASSES[:4], MEAN, STD), **options)


def normalized(images):
    from cifarlens.data import normalize

    return normalize(images, MEAN, STD)


def test_predict_matches_direct_forward_and_is_batch_size_independent():
    model, images = position_model(), random_images(23)
    with torch.no_grad():
        direct = model(normalized(images))
    small = predictor(model, batch_size=7).logits(images)
    big = predictor(model).logits(images)
    assert small.dtype == torch.float32 and small.device.type == "cpu" and small.shape == (23, 4)
    torch.testing.assert_close(small, direct, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(small, big, rtol=1e-4, atol=1e-4)
    assert not model.training


def test_tta_changes_nothing_for_a_flip_invariant_model():
    model, images = flip_invariant_model(), random_images(10)
    plain = predictor(model).logits(images)
    tta = predictor(model, tta=True).logits(images)
    torch.testing.assert_close(plain, tta, rtol=1e-5, atol=1e-5)


def test_tta_averages_image_and_mirror():
    model, images = position_model(), random_images(10)
    plain = predictor(model).logits(images)
    mirrored = predictor(model).logits(images.flip(3))
    tta = predictor(model, tta=True, batch_size=4).logits(images)
    assert not torch.allclose(plain, tta)
    torch.testing.assert_close(tta, (plain + mirrored) / 2, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        x = normalized(images)
        torch.testing.assert_close(tta_logits(model, x), tta, rtol=1e-4, atol=1e-4)


def test_translate_tta_adds_shifted_mirror_pairs_at_half_weight():
    # A "model" that reads two pixels of channel 0: row 1, columns 1 and 2. Pixel (i, j) holds (10i + j)^2.
    i, j = torch.meshgrid(torch.arange(5.0), torch.arange(5.0), indexing="ij")
    x = ((10 * i + j) ** 2).expand(1, 3, 5, 5).clone()

    def model(batch):
        return batch[:, 0, 1, 1:3]

    # mirror pair (145, 144); shifted up-left by one pixel (2, 1); down-right (530, 529)
    torch.testing.assert_close(tta_logits(model, x), torch.tensor([[145.0, 144.0]]))
    expected = torch.tensor([[145.0 / 2 + (2 + 530) / 4, 144.0 / 2 + (1 + 529) / 4]])
    torch.testing.assert_close(tta_logits(model, x, translate=True), expected)


def test_predict_precisions():
    model, images = position_model(), random_images(6)
    fp32 = predictor(model).logits(images)
    bf16 = predictor(model, precision="bf16").logits(images)
    assert bf16.dtype == torch.float32
    torch.testing.assert_close(bf16, fp32, rtol=0.05, atol=0.1)
    with pytest.raises(ConfigError):
        predictor(model, precision="fp16").logits(images)  # cuda only
    with pytest.raises(ConfigError):
        predictor(model, precision="fp8").logits(images)


def test_predict_empty_input():
    out = predictor(position_model()).logits(random_images(0))
    assert out.shape == (0, 4)


# ----------------------------------------------------------------------------- plots


def test_plot_confusion_png(tmp_path):
    rng = np.random.default_rng(0)
    cm = rng.integers(0, 30, size=(10, 10)) + np.diag(rng.integers(200, 900, size=10))
    cm[3] = 0  # a class with no images must not break normalisation
    for normalize in (True, False):
        path = tmp_path / f"cm_{normalize}.png"
        assert plot_confusion(cm.tolist(), CLASSES, path, normalize=normalize) == path
        assert_png(path, (400, 400))
    assert not list(tmp_path.glob("*.tmp"))


def write_metrics(path, rows):
    rundir.RunDir(path.parent).write_metrics(rows)


def read_metrics(path):
    return rundir.RunDir(path.parent).read_metrics()


def test_plot_curves_skips_missing_series(tmp_path):
    metrics = tmp_path / "metrics.csv"
    rows = [
        {
            "epoch": e,
            "train_loss": 2 / e,
            "train_acc": 0.3 + 0.05 * e,
            "lr": 0.1 * (1 - e / 8),
            "seconds": 1,
            "images_per_s": 100,
        }
        | ({"test_loss": 2.1 / e, "test_acc": 0.28 + 0.05 * e} if e in (2, 4, 8) else {})
        for e in range(1, 9)
    ]  # no val at all, test only on some epochs
    write_metrics(metrics, rows)
    out = tmp_path / "curves.png"
    assert plot_curves(read_metrics(metrics), out) == out
    assert_png(out, (400, 400))

    write_metrics(metrics, rows[:1])  # one epoch: still a valid plot
    assert plot_curves(read_metrics(metrics), out) == out
    write_metrics(metrics, [])  # no epochs: nothing written
    assert plot_curves(read_metrics(metrics), tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_plot_misclassified_with_few_mistakes(tmp_path):
    images, labels = random_images(12), torch.arange(12) % 10
    preds = labels.clone()
    preds[[1, 5, 7]] = (labels[[1, 5, 7]] + 1) % 10  # 3 mistakes, fewer than n
    logits = torch.nn.functional.one_hot(preds, 10).float() * torch.linspace(1, 5, 12)[:, None]
    path = plot_misclassified(images, labels, logits, CLASSES, tmp_path / "wrong.png", n=36)
    assert_png(path)
    # no mistakes at all
    right = torch.nn.functional.one_hot(labels, 10).float()
    assert_png(plot_misclassified(images, labels, right, CLASSES, tmp_path / "none.png"), (100, 50))


def test_image_grid_pixel_size(tmp_path):
    images, labels = random_images(60), torch.arange(60) % 10
    labels[labels == 9] = 0  # class 9 absent: blank row, still its name
    path = image_grid(images, labels, CLASSES, tmp_path / "grid.png", per_class=4, seed=1)
    cell = 32 * plots_mod.GRID_SCALE + plots_mod.GRID_PAD
    expected = (plots_mod.GRID_LABEL_PX + 4 * cell + plots_mod.GRID_PAD, 10 * cell + plots_mod.GRID_PAD)
    assert assert_png(path) == expected
    # the first image of a row is copied pixel for pixel (nearest neighbour, 1:1)
    with Image.open(path) as img:
        arr = np.asarray(img.convert("RGB"))
    top = plots_mod.GRID_PAD
    left = plots_mod.GRID_LABEL_PX + plots_mod.GRID_PAD
    block = arr[top : top + 64, left : left + 64]
    assert (block[::2, ::2] == block[1::2, 1::2]).all()
    # same seed, same picture
    again = image_grid(images, labels, CLASSES, tmp_path / "grid2.png", per_class=4, seed=1)
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(path)))


# ----------------------------------------------------------------------------- evaluate_run


class TinyNet(nn.Module):
    """Stand-in for a zoo model when cifarlens.models is not importable."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, num_classes)

    def forward(self, x):
        x = nn.functional.max_pool2d(torch.relu(self.conv(x)), 4)
        return self.fc(x.flatten(1))


def write_cifar(root, per_batch=20, seed=0):
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = [int(v) for v in np.arange(per_batch) % 10]
        entry = {
            "batch_label": name,
            "labels": labels,
            "data": rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8),
            "filenames": [f"{name}_{i}.png" for i in range(per_batch)],
        }
        (folder / name).write_bytes(pickle.dumps(entry))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": list(CLASSES), "num_vis": 3072}))
    return folder


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    data_root = tmp_path / "data"
    write_cifar(data_root)
    run = tmp_path / "run"
    run.mkdir()
    cfg = {"model": "tutorial", "data_dir": str(data_root), "download": False, "subset": 0, "val_size": 10, "seed": 0}
    (run / rundir.RunDir.CONFIG).write_text(yaml.safe_dump(cfg))
    try:
        from cifarlens.models import create_model

        model, name = create_model("tutorial"), "tutorial"
    except (ImportError, CifarlensError):  # the model zoo is not there yet
        torch.manual_seed(0)
        model, name = TinyNet(), "tiny_test_net"
        monkeypatch.setattr(rundir.ModelSpec, "build", lambda self, home=None: TinyNet(self.num_classes))
    spec = rundir.ModelSpec(name=name, kwargs={}, num_classes=10, classes=CLASSES, mean=MEAN, std=STD)
    rundir.save_weights(model, spec, run / rundir.RunDir.WEIGHTS)
    write_metrics(
        run / rundir.RunDir.METRICS,
        [
            {
                "epoch": e,
                "train_loss": 2 / e,
                "train_acc": 0.1 * e,
                "val_loss": 2.2 / e,
                "val_acc": 0.09 * e,
                "lr": 0.01,
            }
            for e in (1, 2, 3)
        ],
    )
    rundir.write_json(run / rundir.RunDir.SUMMARY, {"train": {"epochs": 3}})
    return run


def test_evaluate_run_end_to_end(run_dir):
    from rich.console import Console

    console = Console(record=True, width=120)
    result = evaluate_run(run_dir, split="test", console=console)

    model, spec = rundir.RunDir(run_dir).load_model()
    from cifarlens.data import load_cifar10

    test = load_cifar10(run_dir.parent / "data", download=False).test
    with torch.no_grad():
        logits = model(normalized(test.images))
    direct = (logits.argmax(1) == test.labels).float().mean().item()

    summary = json.loads((run_dir / rundir.RunDir.SUMMARY).read_text())
    assert summary["train"] == {"epochs": 3}  # kept
    assert summary["test"]["accuracy"] == pytest.approx(direct) == pytest.approx(result["accuracy"])
    assert summary["test"]["n"] == 20
    for key in ("loss", "per_class", "confusion", "top_confusions", "seconds"):
        assert key in summary["test"]
    assert sum(map(sum, summary["test"]["confusion"])) == 20

    with open(run_dir / "per_class_test.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["class"] for r in rows] == list(CLASSES)
    assert set(rows[0]) == {"class", "accuracy", "precision", "recall", "f1", "support"}
    assert sum(int(r["support"]) for r in rows) == 20
    with open(run_dir / "confusion_test.csv") as f:
        table = list(csv.reader(f))
    assert table[0][1:] == list(CLASSES) and [r[0] for r in table[1:]] == list(CLASSES)
    assert [[int(v) for v in r[1:]] for r in table[1:]] == summary["test"]["confusion"]

    for name in ("confusion_test.png", "misclassified_test.png", "curves.png"):
        assert_png(run_dir / rundir.RunDir.PLOTS / name)
    text = console.export_text()
    assert "accuracy" in text and "automobile" in text and "support" in text

    # val split and TTA land under their own keys, next to the test results
    evaluate_run(run_dir, split="val", tta=True)
    summary = json.loads((run_dir / rundir.RunDir.SUMMARY).read_text())
    assert {"train", "test", "val_tta"} <= set(summary) and summary["val_tta"]["n"] == 10
    assert (run_dir / "per_class_val_tta.csv").is_file()
    evaluate_run(run_dir, split="val", tta_translate=True)
    summary = json.loads((run_dir / rundir.RunDir.SUMMARY).read_text())
    assert summary["val_tta_translate"]["tta_translate"] and "val_tta" in summary


def test_evaluate_run_user_errors(run_dir, tmp_path):
    with pytest.raises(RunDirError):
        evaluate_run(tmp_path / "missing")
    with pytest.raises(ConfigError):
        evaluate_run(run_dir, split="bogus")
    cfg = yaml.safe_load((run_dir / rundir.RunDir.CONFIG).read_text()) | {"val_size": 0}
    (run_dir / rundir.RunDir.CONFIG).write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="validation"):
        evaluate_run(run_dir, split="val")
    (run_dir / rundir.RunDir.CONFIG).unlink()
    with pytest.raises(RunDirError):
        evaluate_run(run_dir)


def test_an_evaluation_of_other_data_is_kept_beside_the_runs_own_and_says_what_it_scored(run_dir, tmp_path):
    from cifarlens.report import render_report

    own = evaluate_run(run_dir, tta_translate=True)
    other_root = tmp_path / "other"
    write_cifar(other_root, per_batch=30, seed=5)  # another folder: 30 test images, other pixels
    other = evaluate_run(run_dir, tta_translate=True, data_dir=other_root)
    run = rundir.RunDir(run_dir)
    key = f"test_tta_translate@{other['data']['fingerprint'][:8]}"
    assert set(run.evaluations()) == {"test_tta_translate", key}
    assert run.summary["test_tta_translate"]["n"] == 20 and run.summary[key]["n"] == 30  # the own one kept
    assert run.summary[key]["data"]["folder"] == str((other_root / "cifar-10-batches-py").resolve())
    assert (run_dir / f"per_class_{key}.csv").is_file()
    assert run.headline()["key"] == "test_tta_translate" and run.headline()["n"] == 20
    # the run's own folder named explicitly is the run's own data: the entry is replaced, not duplicated
    again = evaluate_run(run_dir, tta_translate=True, data_dir=run_dir.parent / "data")
    assert again["data"]["fingerprint"] == own["data"]["fingerprint"]
    assert len(rundir.RunDir(run_dir).evaluations()) == 2
    html = render_report([run_dir])
    assert key in html and str(other_root.resolve()) in html and own["data"]["fingerprint"] in html
