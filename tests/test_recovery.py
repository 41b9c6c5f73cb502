"""Nothing lost: a run killed at any moment (real processes, real signals) or stopped by a full disk resumes
and ends with bit-identical weights to an uninterrupted run."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_error, cifarlens
from safetensors.torch import load_file

from cifarlens.config import build_config
from cifarlens.errors import CheckpointWriteError
from cifarlens.training import TrainConfig, recipe_options, resume, train
from cifarlens.training.trainer import setup

# seed_bn8 on the synthetic set, one thread: about 3 s an epoch of 12 steps, long enough to kill inside one.
FLAGS = (
    "--recipe",
    "seed",
    "--epochs",
    "2",
    "--batch-size",
    "25",
    "--subset",
    "300",
    "--precision",
    "fp32",
    "--threads",
    "1",
    "--no-evaluate",
    "--no-report",
    "--no-download",
)


def same_weights(a: Path, b: Path) -> bool:
    x, y = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def latest(run: Path) -> dict:
    try:
        return json.loads((run / "checkpoint" / "latest.json").read_text())
    except (OSError, ValueError):
        return {}


def start(run: Path, cifar_root: Path, *extra: str) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "cifarlens.cli",
        "train",
        *FLAGS,
        "--data-dir",
        str(cifar_root),
        "--out",
        str(run),
        *extra,
    ]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the run ended before the moment to kill it: {proc.communicate()}"
        assert time.monotonic() < deadline, "the moment to kill the run never came"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def reference(cifar_root, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("recovery") / "uninterrupted"
    result = cifarlens("train", *FLAGS, "--data-dir", cifar_root, "--out", run, "--checkpoint-every", "0")
    assert result.returncode == 0, result.stderr
    return run


MOMENTS = {
    # before any checkpoint: the first epoch is under way (its config is written just before it starts)
    "first-epoch": (
        ("--checkpoint-every", "0"),
        lambda run: (run / "config.yaml").is_file() and time.sleep(1.0) is None,
    ),
    # after a recovery checkpoint inside an epoch
    "mid-epoch": (("--checkpoint-every", "0.3"), lambda run: latest(run).get("step", 0) > 0),
    # right after the first epoch's checkpoint, as the second epoch begins
    "between-epochs": (("--checkpoint-every", "0"), lambda run: latest(run).get("epoch") == 1),
}


@pytest.mark.parametrize("moment", sorted(MOMENTS))
def test_sigkill_at_any_moment_then_resume_is_bit_identical(moment, reference, cifar_root, tmp_path):
    flags, ready = MOMENTS[moment]
    run = tmp_path / moment
    proc = start(run, cifar_root, *flags)
    wait_for(lambda: ready(run), proc)
    before = latest(run)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert not (run / "model.safetensors").exists()
    if moment == "first-epoch":
        assert before == {}  # really killed before any checkpoint
    resumed = cifarlens("train", "--resume", run)
    assert resumed.returncode == 0, resumed.stderr
    expected = "starting it from epoch 0" if moment == "first-epoch" else "resuming"
    assert expected in resumed.stdout, resumed.stdout
    assert same_weights(run, reference)


def test_sigterm_writes_a_checkpoint_exits_nonzero_and_resumes_bit_identical(reference, cifar_root, tmp_path):
    run = tmp_path / "term"
    proc = start(run, cifar_root, "--checkpoint-every", "0")
    wait_for(lambda: (run / "config.yaml").is_file() and time.sleep(1.0) is None, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, (out, err)
    assert "Traceback" not in err and "error:" not in err
    lines = [line for line in err.splitlines() if line.startswith("interrupted:")]
    assert len(lines) == 1 and "stopped by SIGTERM" in lines[0] and f"cifarlens train --resume {run}" in lines[0], err
    assert latest(run)  # a checkpoint was written although --checkpoint-every is 0
    resumed = cifarlens("train", "--resume", run)
    assert resumed.returncode == 0, resumed.stderr
    assert same_weights(run, reference)


def quick(cifar_root: Path, out: Path, **overrides) -> TrainConfig:
    options = {
        "epochs": 3,
        "batch_size": 50,
        "subset": 200,
        "precision": "fp32",
        "threads": 1,
        "evaluate": False,
        "report": False,
        "data_dir": str(cifar_root),
        "download": False,
        "out": str(out),
    }
    return build_config(TrainConfig, recipe_options("tutorial"), options | overrides)


def test_a_full_disk_keeps_the_previous_checkpoint_and_the_run_resumes(cifar_root, tmp_path, monkeypatch):
    import cifarlens.run.checkpoint as checkpoint

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole = train(quick(cifar_root, tmp_path / "whole"))
        saves, real_save = [], torch.save

        def full_disk_on_the_second(obj, path, *args, **kwargs):
            saves.append(path)
            if len(saves) == 2:
                Path(path).write_bytes(b"partial")  # what a full disk leaves: a truncated temporary file
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_save(obj, path, *args, **kwargs)

        monkeypatch.setattr(checkpoint.torch, "save", full_disk_on_the_second)
        run = tmp_path / "full"
        with pytest.raises(CheckpointWriteError, match=f"no space left on the disk holding {run / 'checkpoint'}"):
            train(quick(cifar_root, run))
        monkeypatch.setattr(checkpoint.torch, "save", real_save)
        assert latest(run)["epoch"] == 1 and not list((run / "checkpoint").glob(".*.tmp"))
        resume(run)
    assert same_weights(run, whole)


def test_resume_of_a_run_without_a_checkpoint_starts_it_with_its_saved_config(cifar_root, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole = train(quick(cifar_root, tmp_path / "whole"))
        run = tmp_path / "fresh"
        setup(
            quick(cifar_root, run, lr=0.02)
        )  # the run folder and its config, as a kill before the first step leaves them
        resume(run)
    assert not same_weights(run, whole)  # it trained with its own saved lr, not the defaults
    again = train(quick(cifar_root, tmp_path / "again", lr=0.02))
    assert same_weights(run, again)


def test_train_out_on_an_unfinished_run_points_to_resume(cifar_root, tmp_path):
    run = tmp_path / "run"
    setup(quick(cifar_root, run))
    result = cifarlens("train", "--recipe", "tutorial", "--data-dir", cifar_root, "--no-download", "--out", run)
    assert_one_line_error(result, "already holds a run", f"--resume {run}")
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "provenance.json"]  # nothing overwritten
