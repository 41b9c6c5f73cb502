"""--distributed: torchrun, 2 CPU processes, gloo, DistributedDataParallel; rank 0 writes the run."""

import csv
import json
import os
import shutil
import subprocess
import sys
import warnings

import pytest
import torch
from safetensors.torch import load_file

from cifarlens.config import build_config
from cifarlens.data import prepare_data
from cifarlens.errors import ConfigError
from cifarlens.training import TrainConfig, recipe_options, train

SETTINGS = {
    "recipe": "tutorial",
    "epochs": 2,
    "batch_size": 50,
    "optimizer": "sgd",
    "lr": 0.05,
    "subset": 200,
    "threads": 1,
    "precision": "fp32",
    "download": False,
    "evaluate": False,
}
OPTIONS = [
    arg for k, v in SETTINGS.items() for arg in ([f"--no-{k}"] if v is False else [f"--{k.replace('_', '-')}", str(v)])
]


def torchrun(*args, timeout=120):
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "cifarlens.cli",
            "train",
            *map(str, args),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def ddp_run(cifar_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "run"
    result = torchrun("--distributed", *OPTIONS, "--data-dir", cifar_root, "--out", out)
    assert result.returncode == 0, result.stdout + result.stderr
    return out, result


def metrics(run):
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_two_processes_write_one_run_that_matches_a_single_process_run(ddp_run, cifar_root, tmp_path):
    out, result = ddp_run
    assert result.stdout.count("run saved to") == 1  # only rank 0 prints and writes
    assert json.loads((out / "provenance.json").read_text())["world_size"] == 2
    assert sorted(p.name for p in (out / "checkpoint").iterdir()) == [
        "epoch-0001.safetensors",
        "epoch-0001.state.pt",
        "epoch-0002.safetensors",
        "epoch-0002.state.pt",
        "latest.json",
    ]
    assert [p.name for p in out.parent.iterdir()] == ["run"]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = prepare_data(cifar_root, download=False, subset=200)
    cfg = build_config(TrainConfig, recipe_options("tutorial"), SETTINGS, {"out": str(tmp_path / "one")})
    single = train(cfg, data=data)
    ddp_rows, single_rows = metrics(out), metrics(single)
    assert list(ddp_rows[0]) == list(single_rows[0]) and len(ddp_rows) == len(single_rows) == 2
    # The same global batches, gradients averaged over two halves: the same training, up to float rounding.
    for a, b in zip(ddp_rows, single_rows):
        for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
            assert float(a[key]) == pytest.approx(float(b[key]), abs=1e-4), key
    wa, wb = load_file(str(out / "model.safetensors")), load_file(str(single / "model.safetensors"))
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)


def test_resume_a_distributed_run(ddp_run, tmp_path):
    out, _ = ddp_run
    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    (resumed / "model.safetensors").unlink()
    latest = resumed / "checkpoint" / "latest.json"
    latest.write_text(json.dumps({"epoch": 1, "weights": "epoch-0001.safetensors", "state": "epoch-0001.state.pt"}))
    result = torchrun("--resume", resumed)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "resuming" in result.stdout and "after epoch 1/2" in result.stdout
    wa, wb = load_file(str(out / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
    assert [r["epoch"] for r in metrics(resumed)] == ["1", "2"]


def test_distributed_without_torchrun_says_how_to_launch(cifar_root, tmp_path, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    cfg = build_config(
        TrainConfig,
        {
            "model": "tutorial",
            "distributed": True,
            "data_dir": str(cifar_root),
            "download": False,
            "out": str(tmp_path / "r"),
        },
    )
    with pytest.raises(ConfigError, match="torchrun --nproc_per_node N -m cifarlens.cli train --distributed"):
        train(cfg)
