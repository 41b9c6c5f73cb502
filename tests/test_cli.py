"""The cifarlens command as a user runs it: real processes, real exit codes, one-line errors."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import assert_one_line_error, cifarlens, real_data_dir, write_cifar

from cifarlens.data.cifar10 import find_batches_dir
from cifarlens.run import RunDir


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """The real CIFAR-10 when CIFARLENS_DATA_DIR is set, else 2,500 synthetic training images."""
    return real_data_dir() or write_cifar(tmp_path_factory.mktemp("cli_cifar"), per_batch=500, test_size=2000)


@pytest.fixture(scope="module")
def trained_run(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tutorial"
    result = cifarlens(
        "train",
        "--recipe",
        "tutorial",
        "--epochs",
        1,
        "--batch-size",
        16,
        "--optimizer",
        "adam",
        "--lr",
        2e-3,
        "--subset",
        2000,
        "--data-dir",
        data_dir,
        "--out",
        out,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    return out, result


def test_train_tutorial_one_epoch_on_2000_images(trained_run):
    out, result = trained_run
    assert "epoch   1/1" in result.stdout
    for name in ("config.yaml", "metrics.csv", "model.safetensors", "summary.json", "plots/curves.png"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test"]["n"] == 2000
    # One epoch reaches ~26% on the real data; chance is 10% (std 0.7 points at n=2000).
    assert summary["test"]["accuracy"] > 0.18


def test_evaluate_run_prints_per_class_table(trained_run):
    out, _ = trained_run
    result = cifarlens("evaluate", out, "--tta")
    assert result.returncode == 0, result.stderr
    assert "airplane" in result.stdout and "truck" in result.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert "test_tta" in summary and "test" in summary


def test_kill_and_resume(data_dir, tmp_path):
    out = tmp_path / "killed"
    args = [
        "train",
        "--model",
        "tutorial",
        "--epochs",
        4,
        "--batch-size",
        4,
        "--optimizer",
        "sgd",
        "--lr",
        0.01,
        "--subset",
        2000,
        "--data-dir",
        data_dir,
        "--out",
        out,
        "--no-evaluate",
        "--precision",
        "fp32",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "cifarlens.cli", *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    latest = out / "checkpoint" / "latest.json"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if latest.is_file() and json.loads(latest.read_text())["epoch"] >= 1:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "model.safetensors").exists()
    done = json.loads(latest.read_text())["epoch"]
    assert 1 <= done < 4
    result = cifarlens("train", "--resume", out)
    assert result.returncode == 0, result.stderr
    assert f"resuming {out} after epoch {done}/4" in result.stdout.replace("\n", "")
    assert (out / "model.safetensors").is_file()
    assert [r["epoch"] for r in RunDir(out).read_metrics()] == [1, 2, 3, 4]


def test_resume_refuses_new_options(trained_run):
    out, _ = trained_run
    assert_one_line_error(cifarlens("train", "--resume", out, "--lr", 0.1), "drop --lr", "only --data-dir")


def test_run_found_by_evaluate_without_the_data_env_var(tmp_path):
    data = write_cifar(tmp_path / "data", per_batch=40, test_size=100)
    env = os.environ.copy()
    env["CIFARLENS_DATA_DIR"] = str(data)
    out = tmp_path / "run"
    result = cifarlens(
        "train",
        "--recipe",
        "tutorial",
        "--epochs",
        1,
        "--subset",
        100,
        "--no-evaluate",
        "--no-download",
        "--out",
        out,
        env=env,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    env.pop("CIFARLENS_DATA_DIR")
    env["XDG_CACHE_HOME"] = str(tmp_path / "empty_cache")
    result = cifarlens("evaluate", out, env=env, cwd=tmp_path / "data")
    assert result.returncode == 0, result.stderr + result.stdout
    assert json.loads((out / "summary.json").read_text())["test"]["n"] == 100
    # Data moved after training: the error points at the run's config and at --data-dir, which fixes it.
    (tmp_path / "data").rename(tmp_path / "moved")
    result = cifarlens("evaluate", out, env=env)
    assert_one_line_error(result, "CIFAR-10 not found in", f"data_dir in {out / 'config.yaml'}", "--data-dir")
    assert "CIFARLENS_DATA_DIR" not in result.stderr  # the saved folder wins over it, so it is no fix
    result = cifarlens("evaluate", out, "--data-dir", tmp_path / "moved", env=env)
    assert result.returncode == 0, result.stderr + result.stdout


def test_early_size_on_a_fixed_size_model_is_a_clear_error(tmp_path):
    data = write_cifar(tmp_path / "data", per_batch=20, test_size=20)
    result = cifarlens(
        "train",
        "--recipe",
        "tutorial",
        "--early-size",
        24,
        "--early-epochs",
        1,
        "--data-dir",
        data,
        "--no-download",
        "--out",
        tmp_path / "r",
    )
    assert_one_line_error(result, "does not take 24x24 inputs", "--early-size")
    assert not (tmp_path / "r").exists()  # the run folder is made only once the options are known to work


def test_missing_data_dir(tmp_path):
    env = os.environ.copy()
    env.pop("CIFARLENS_DATA_DIR", None)
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    result = cifarlens("train", "--data-dir", tmp_path / "nothing", "--no-download", "--out", tmp_path / "r", env=env)
    assert_one_line_error(result, "CIFAR-10 not found in", str(tmp_path / "nothing"))
    env["CIFARLENS_DATA_DIR"] = str(tmp_path / "nothing")
    result = cifarlens("train", "--no-download", "--out", tmp_path / "r", env=env)
    assert_one_line_error(result, "CIFAR-10 not found in", "from CIFARLENS_DATA_DIR")
    assert not (tmp_path / "r").exists()


def test_unknown_model_lists_valid_ones(tmp_path):
    result = cifarlens("train", "--model", "resnet9000", "--out", tmp_path / "r")
    assert_one_line_error(result, "unknown model 'resnet9000'", "resnet18", "tutorial")


def test_corrupted_batch_file(tmp_path):
    root = write_cifar(tmp_path, per_batch=20, test_size=20)
    batch = root / "cifar-10-batches-py" / "data_batch_2"
    batch.write_bytes(batch.read_bytes()[:5000])
    result = cifarlens("train", "--data-dir", root, "--out", tmp_path / "r", "--no-download")
    assert_one_line_error(result, "data_batch_2 is truncated or corrupted")


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--epochs", "0"], "--epochs must be positive"),
        (["--optimizer", "rmsprop"], "choose one of: sgd, adam, adamw"),
        (["--augment", "crop,rotate"], "unknown augmentation rotate"),
        (["--precision", "fp16", "--device", "cpu"], "fp16 is not supported on CPU"),
        (["--model-args", "{depth: 3}"], "does not take depth"),
    ],
)
def test_bad_option_values(args, fragment, tmp_path, data_dir):
    result = cifarlens("train", *args, "--data-dir", data_dir, "--out", tmp_path / "r", "--subset", 100)
    assert_one_line_error(result, fragment)


def test_non_numeric_option_is_a_usage_error(tmp_path):
    result = cifarlens("train", "--epochs", "ten")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--epochs" in result.stderr and "integer" in result.stderr


def test_bad_config_key(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("epochz: 3\n")
    assert_one_line_error(cifarlens("train", "--config", cfg), "unknown option 'epochz'", "epochs")


def test_evaluate_missing_run(tmp_path):
    assert_one_line_error(cifarlens("evaluate", tmp_path / "nope"), "run directory", "not found")


def test_models_lists_every_model_with_params():
    result = cifarlens("models")
    assert result.returncode == 0, result.stderr
    for name in ("tutorial", "seed_bn8", "vgg_small", "conv_blocks", "resnet18", "mobilenet_v2", "vgg16"):
        assert name in result.stdout
    assert "62,006" in result.stdout  # the tutorial net


def test_summary_table():
    result = cifarlens("summary", "tutorial")
    assert result.returncode == 0, result.stderr
    assert "conv1" in result.stdout and "62,006" in result.stdout
    assert_one_line_error(cifarlens("summary", "nonet"), "unknown model 'nonet'")


def test_show_data_writes_grid(data_dir, tmp_path):
    png = tmp_path / ("a_folder_name_long_enough_that_the_path_is_wider_than_a_terminal_" * 2) / "grid.png"
    result = cifarlens("show-data", "--data-dir", data_dir, "--out", png, "--per-class", 4)
    assert result.returncode == 0, result.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {png}" in result.stdout  # printed whole, never folded, so it can be copied


def test_config_file_and_flag_override(data_dir, tmp_path):
    cfg = tmp_path / "run.yaml"
    relative = os.path.relpath(data_dir, tmp_path)  # as a user types it, from the folder they are in
    cfg.write_text(f"recipe: tutorial\nepochs: 1\nbatch_size: 50\nsubset: 200\ndata_dir: {relative}\nevaluate: false\n")
    out = tmp_path / "r"
    result = cifarlens("train", "--config", cfg, "--batch-size", 40, "--out", out, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    saved = (out / "config.yaml").read_text()
    assert "batch_size: 40" in saved and "model: tutorial" in saved and "subset: 200" in saved
    # The folder read, stored absolute, so evaluate/explain run from any other folder find the same data.
    assert f"data_dir: {find_batches_dir(Path(data_dir)).resolve()}" in saved


def test_ctrl_c_names_the_run_to_resume(data_dir, tmp_path):
    args = ["train", "--model", "tutorial", "--epochs", 50, "--batch-size", 4, "--subset", 2000, "--data-dir", data_dir]
    # A shell that starts jobs in the background (nohup cmd &) ignores SIGINT for them and their
    # children; Python then installs no KeyboardInterrupt handler. Start the child as a terminal would.
    proc = subprocess.Popen(
        [sys.executable, "-m", "cifarlens.cli", *map(str, args)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 300
    while time.time() < deadline and not list(tmp_path.glob("runs/*/checkpoint/latest.json")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    run = next(tmp_path.glob("runs/tutorial-*"))
    assert proc.returncode == 130
    assert f"continue with cifarlens train --resume {run.relative_to(tmp_path)}" in " ".join(stderr.split())


def test_piped_output_is_not_cut_to_80_columns():
    """`cifarlens models | cat` and `--help | less`: off a terminal, descriptions and help stay whole."""
    from cifarlens.models import list_models, model_description

    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    models = cifarlens("models", env=env)
    assert models.returncode == 0, models.stderr
    described = [model_description(name) for name in list_models()]
    assert any(len(text) > 60 and text[:60] in models.stdout for text in described)
    help_text = cifarlens("train", "--help", env=env).stdout
    assert "YAML file of options; flags override it" in help_text
