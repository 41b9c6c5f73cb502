"""Shared fixtures: a small synthetic CIFAR-10 in the official python format."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cifarlens.config import build_config
from cifarlens.run import ModelSpec
from cifarlens.training import TrainConfig, recipe_options, train

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def make_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Images a small net can learn: each class has its own colour and a bright stripe.

    Returns (N, 3072) uint8 rows in the official R(1024) G(1024) B(1024) layout.
    """
    n = len(labels)
    images = rng.integers(0, 60, size=(n, 3, 32, 32)).astype(np.int16)
    for i, label in enumerate(labels):
        images[i, label % 3] += 120 + 10 * (label // 3)
        row = 3 * label
        images[i, :, row : row + 3, :] = 250
    return np.clip(images, 0, 255).astype(np.uint8).reshape(n, 3072)


def write_batch(path: Path, labels: np.ndarray, rng: np.random.Generator, bytes_keys: bool = False) -> None:
    entry = {
        "batch_label": "synthetic",
        "labels": [int(x) for x in labels],
        "data": make_images(labels, rng),
        "filenames": [f"img_{i}.png" for i in range(len(labels))],
    }
    if bytes_keys:
        entry = {k.encode(): v for k, v in entry.items()}
    with open(path, "wb") as f:
        pickle.dump(entry, f, protocol=2)


def write_cifar(
    root: Path, per_batch: int = 100, test_size: int = 100, seed: int = 0, bytes_keys: bool = False
) -> Path:
    """Write data_batch_1..5, test_batch and batches.meta under ``root/cifar-10-batches-py``."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(1, 6):
        write_batch(folder / f"data_batch_{i}", np.arange(per_batch) % 10, rng, bytes_keys)
    write_batch(folder / "test_batch", np.arange(test_size) % 10, rng, bytes_keys)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": CLASSES, "num_cases_per_batch": per_batch}, f, protocol=2)
    return root


@pytest.fixture(scope="session")
def cifar_root(tmp_path_factory) -> Path:
    """Folder holding a synthetic ``cifar-10-batches-py`` (500 train, 100 test images)."""
    return write_cifar(tmp_path_factory.mktemp("cifar"))


@pytest.fixture
def no_env_data_dir(monkeypatch, tmp_path):
    """No CIFARLENS_DATA_DIR and an empty cache dir, as on a fresh machine."""
    monkeypatch.delenv("CIFARLENS_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def real_data_dir() -> Path | None:
    value = os.environ.get("CIFARLENS_DATA_DIR")
    # Absolute, so tests that run the CLI from another working directory still find it.
    return Path(value).resolve() if value else None


realdata = pytest.mark.skipif(real_data_dir() is None, reason="set CIFARLENS_DATA_DIR to the real CIFAR-10 folder")


def cifarlens(*args, env=None, cwd=None, timeout=600) -> subprocess.CompletedProcess:
    """Run the ``cifarlens`` program in a fresh process, as a user would (exit code, stdout, stderr)."""
    return subprocess.run(
        [sys.executable, "-m", "cifarlens.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=env or os.environ.copy(),
        timeout=timeout,
        cwd=cwd,
    )


def roll_back_to_epoch(run: Path, epoch: int) -> None:
    """Make a finished run look killed right after ``epoch``: its checkpoint of that epoch is the latest, the
    next epoch's and the final weights are gone (``resume`` must then redo the rest)."""
    ckpt = run / "checkpoint"
    (ckpt / "latest.json").write_text(
        json.dumps(
            {"epoch": epoch, "weights": f"epoch-{epoch:04d}.safetensors", "state": f"epoch-{epoch:04d}.state.pt"}
        )
    )
    (ckpt / f"epoch-{epoch + 1:04d}.safetensors").unlink()
    (run / "model.safetensors").unlink()


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """A user mistake: exit code 2, no traceback, one ``error:`` line holding every fragment."""
    assert result.returncode == 2, result.stderr + result.stdout
    assert "Traceback" not in result.stderr + result.stdout
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr.replace("\n", " "), result.stderr


# -- a trained run, and a model whose right answer is known (the explain tests) ------------------------------------
SQUARE = 6  # side of the planted square


@pytest.fixture(scope="module")
def run_dir(cifar_root, tmp_path_factory):
    """The tutorial net trained for 2 epochs on the synthetic CIFAR-10 (500 train, 100 test images)."""
    out = tmp_path_factory.mktemp("explain") / "tutorial"
    options = {
        "model": "tutorial",
        "epochs": 2,
        "batch_size": 25,
        "optimizer": "sgd",
        "lr": 0.05,
        "schedule": "cosine",
        "augment": "flip",
        "data_dir": str(cifar_root),
        "download": False,
        "out": str(out),
        "precision": "fp32",
        "evaluate": False,
        "channels_last": False,
        "threads": 1,
    }
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
    return SQUARE_SPEC.inputs(images)


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
