"""The GPU path of the trainer (tests marked ``cuda``, skipped without a GPU), and ``benchmarks/gpu_check.sh
--dry-run``."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_error
from safetensors.torch import load_file

from cifarlens.config import build_config
from cifarlens.device import autocast, resolve_precision
from cifarlens.models import create_model
from cifarlens.training import TrainConfig, recipe_options, resume, train
from cifarlens.training.trainer import begin_epoch, setup, train_one_epoch, train_step

ROOT = Path(__file__).resolve().parents[1]
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def gpu_config(root: Path, out: Path, **options) -> TrainConfig:
    """The fast recipe on the synthetic data, 3 short epochs of a narrow airnet on the GPU."""
    quick = {
        "data_dir": str(root),
        "out": str(out),
        "device": "cuda",
        "download": False,
        "report": False,
        "epochs": 3,
        "early_epochs": 1,
        "batch_size": 100,
        "model_args": {"width": 16, "wide": 32},
    }
    return build_config(TrainConfig, recipe_options("fast"), quick | options)


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model.safetensors"))


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.cuda
@gpu
def test_same_seed_same_weights_on_the_gpu(cifar_root, tmp_path):
    first = train(gpu_config(cifar_root, tmp_path / "a"))
    again = train(gpu_config(cifar_root, tmp_path / "b"))
    other = train(gpu_config(cifar_root, tmp_path / "c", seed=1))
    assert same(weights(first), weights(again))
    assert not same(weights(first), weights(other))
    summary = json.loads((first / "summary.json").read_text())["train"]
    assert summary["device"].startswith("cuda") and summary["train_s"] > 0 and summary["compile_s"] == 0


@pytest.mark.cuda
@gpu
def test_resume_on_the_gpu_ends_with_the_same_weights(cifar_root, tmp_path):
    whole = train(gpu_config(cifar_root, tmp_path / "whole"))

    class Stop(Exception):
        pass

    def stop_after_first(row):
        if row["epoch"] == 1:
            raise Stop

    run = tmp_path / "stopped"
    with pytest.raises(Stop):  # every epoch checkpointed: --checkpoint-every 0
        train(gpu_config(cifar_root, run, checkpoint_every=0), on_epoch_end=stop_after_first)
    assert json.loads((run / "checkpoint" / "latest.json").read_text())["epoch"] == 1
    resume(run)
    assert same(weights(run), weights(whole))


@pytest.mark.cuda
@gpu
def test_autocast_dtypes_and_channels_last_on_the_gpu():
    device = torch.device("cuda")
    assert resolve_precision("auto", device) == ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    model = create_model("airnet", num_classes=10, width=16, wide=32).to(device, memory_format=torch.channels_last)
    x = torch.randn(4, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        with autocast(device, precision):
            assert model(x).dtype == dtype
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.shape[-1] > 1)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.cuda
@gpu
def test_compiled_path_compiles_ahead_and_never_again(cifar_root, tmp_path, monkeypatch):
    state = setup(gpu_config(cifar_root, tmp_path / "compiled", compile=True))
    assert state.ledger.compile_s > 0
    monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)  # a compile on the clock fails the test
    for epoch in range(state.cfg.epochs):
        metrics = train_one_epoch(state, epoch)
        assert metrics.train_loss == metrics.train_loss  # finite, not NaN
    state.close()


@pytest.mark.cuda
@gpu
def test_a_training_step_on_the_gpu_never_waits_for_the_device(cifar_root, tmp_path):
    state = setup(gpu_config(cifar_root, tmp_path / "sync"))
    assert state.feed.train.images.is_cuda and state.feed.train.labels.is_cuda
    run = begin_epoch(state, 0)
    batches = state.feed.batches(0, run.gen)
    train_step(state, run, *next(batches))  # first use: cached constants made
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        train_step(state, run, *next(batches))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    state.close()


def test_gpu_check_dry_run_writes_numbers(cifar_root, tmp_path):
    out = tmp_path / "out"
    env = os.environ | {"CIFARLENS_DATA_DIR": str(cifar_root), "OUT": str(out), "PYTHON": sys.executable}
    result = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", "--dry-run"],
        cwd=ROOT,
        env=env,
        text=True,
        capture_output=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    report = json.loads((out / "gpu_check.json").read_text())
    summary = report["summary"]
    assert report["dry_run"] and summary["held_out_acc"]["fast"]["n"] == 2
    assert all(0 <= acc["mean"] <= 1 for acc in summary["held_out_acc"].values())
    assert all(s > 0 for s in summary["train_s_full_size"].values()) and summary["fast_vs_airbench94_time"] > 0
    assert {r["backend"] for r in report["bench"]["results"]} == {"torch", "torch-compile", "onnxruntime"}
    assert all(v > 0 for r in report["bench"]["results"] for v in r["throughput"].values())
    table = (out / "gpu_check.md").read_text()
    assert "| fast | 2 |" in table and "| airbench94 | 1 |" in table and "| onnxruntime |" in table
    assert (out / "gpu_check.log").is_file()


def _gpu_check_module(monkeypatch):
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_check", module)  # its dataclass looks itself up there
    spec.loader.exec_module(module)
    return module


def test_gpu_check_keeps_what_ran_when_a_step_fails(cifar_root, tmp_path, monkeypatch):
    """A compile error on the GPU (here: raised in the fast --compile step) costs that step, not the others."""
    check = _gpu_check_module(monkeypatch)
    real_train = check.train

    def train(name, args, *rest):
        if name == "fast-compile":
            raise RuntimeError("inductor broke")
        return real_train(name, args, *rest)

    monkeypatch.setattr(check, "train", train)
    monkeypatch.setenv("CIFARLENS_DATA_DIR", str(cifar_root))
    monkeypatch.setenv("TORCHDYNAMO_DISABLE", "1")  # bench's compiled backend runs eagerly, as in the dry run
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", "--work", str(tmp_path / "work"), "--out", str(out), "--dry-run"])
    with pytest.raises(SystemExit, match="incomplete"):
        check.main()
    report = json.loads((out / "gpu_check.json").read_text())
    assert not report["complete"]
    assert report["failed"] == [{"step": "fast-compile seed 0 (full)", "error": "RuntimeError: inductor broke"}]
    assert [(r["recipe"], r["seed"]) for r in report["runs"]] == [("fast", 0), ("airbench94", 0), ("fast", 1)]
    assert report["summary"]["fast_vs_airbench94_time"] > 0 and report["bench"]["results"]
    assert "INCOMPLETE: failed fast-compile seed 0 (full)" in (out / "gpu_check.md").read_text()


class FakeSteps:
    """gpu_check's train and bench replaced by steps that take ``step_s`` seconds of a fake clock each and look
    at gpu_check.json as the next step begins."""

    def __init__(self, check, out: Path, step_s: float = 100.0):
        self.clock, self.step_s, self.out, self.seen = 0.0, step_s, out, []
        check.time = type("FakeTime", (), {"time": lambda _: self.clock, "perf_counter": lambda _: self.clock})()

    def _look(self):
        report = json.loads((self.out / "gpu_check.json").read_text())
        self.seen.append(len(report["runs"]) + len(report["timed"]))
        self.clock += self.step_s

    def train(self, name, args, seed, data, work, extra):
        self._look()
        return {
            "recipe": name,
            "seed": seed,
            "run": str(work),
            "held_out_acc": 0.9 - 0.01 * seed,
            "train_s": 1.0,
            "compile_s": 0.0,
            "epochs": [{"epoch": 1, "train_clock_s": 1.0, "held_out_acc": 0.8}],
        }

    def bench(self, run, work, options):
        self._look()
        return {"results": []}


def fake_check(monkeypatch, cifar_root, tmp_path, *flags):
    check = _gpu_check_module(monkeypatch)
    out = tmp_path / "out"
    steps = FakeSteps(check, out)
    monkeypatch.setattr(check, "train", steps.train)
    monkeypatch.setattr(check, "bench", steps.bench)
    monkeypatch.setenv("CIFARLENS_DATA_DIR", str(cifar_root))
    monkeypatch.delenv("TORCHDYNAMO_DISABLE", raising=False)
    monkeypatch.setattr(
        sys, "argv", ["gpu_check.py", "--work", str(tmp_path / "work"), "--out", str(out), "--started", "0", *flags]
    )
    return check, steps, out


def test_gpu_check_has_every_finished_step_on_disk_before_the_next_begins(cifar_root, tmp_path, monkeypatch):
    """A check killed at the device's limit keeps its last finished step (the files never lag one step)."""
    check, steps, out = fake_check(monkeypatch, cifar_root, tmp_path, "--dry-run", "--budget-s", "1e9")
    check.main()
    runs = len(check.plan(check.DRY["seeds"]))
    assert steps.seen == list(range(runs)) + [runs]  # bench, the last step, saw every run on disk
    report = json.loads((out / "gpu_check.json").read_text())
    assert (
        report["complete"] and len(report["runs"]) + len(report["timed"]) == runs and report["bench"] == {"results": []}
    )
    assert set(report["step_s"]) == {
        *(f"{n} seed {s} ({sp})" for sp, n, _, s in check.plan(check.DRY["seeds"])),
        "cifarlens bench",
    }


def test_gpu_check_skips_a_step_that_would_not_end_within_the_budget(cifar_root, tmp_path, monkeypatch):
    """100 s a step, a 450 s budget: the four headline steps end at 400 s; the next subset run would end at
    500 s (its like took 100 s), so it is skipped although it could begin in time; the compiled run is
    estimated from the eager one; bench (a few seconds) still fits."""
    check, steps, out = fake_check(
        monkeypatch, cifar_root, tmp_path, "--dry-run", "--budget-s", "450", "--compile-allowance-s", "0"
    )
    with pytest.raises(SystemExit, match="incomplete"):
        check.main()
    report = json.loads((out / "gpu_check.json").read_text())
    assert [(r["recipe"], r["seed"]) for r in report["runs"]] == [("fast", 0), ("airbench94", 0)]
    assert [r["recipe"] for r in report["timed"]] == ["fast", "airbench94"]
    assert report["skipped"] == ["fast seed 1 (subset)", "fast-compile seed 0 (full)"]
    assert report["bench"] == {"results": []} and not report["failed"]


def test_gpu_check_without_a_gpu_stops_at_once_outside_the_dry_run(tmp_path):
    env = os.environ | {"OUT": str(tmp_path / "out"), "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh"], cwd=ROOT, env=env, text=True, capture_output=True, timeout=300, check=False
    )
    assert_one_line_error(result, "sees no CUDA GPU")
    assert "tests marked cuda" not in result.stdout


def test_gpu_check_fails_when_no_cuda_test_passed(cifar_root, tmp_path, monkeypatch):
    """pytest exits 0 when every cuda test skipped (no GPU visible to them): on the GPU that is a failure."""
    check, _, out = fake_check(monkeypatch, cifar_root, tmp_path)
    check.pack(None, tmp_path / "packed", 400, 100, seed=0, method=0)
    log = tmp_path / "pytest.txt"
    log.write_text("5 skipped, 6 deselected in 0.04s\n")
    monkeypatch.setattr(check.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(
        check, "machine", lambda: {"torch": "x", "date": "d", "versions": {}, "onnxruntime_providers": []}
    )
    monkeypatch.setattr(check, "FULL_SIZE", 1000)
    sys.argv += ["--packed", str(tmp_path / "packed"), "--pytest-log", str(log), "--budget-s", "1e9"]
    with pytest.raises(SystemExit, match="incomplete"):
        check.main()
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["failed"] == [
        {"step": "cuda tests", "error": "no cuda test passed ({'skipped': 5, 'deselected': 6})"}
    ]
    assert len(report["runs"]) == 7  # the runs still went on


def test_gpu_check_past_its_budget_skips_the_steps_and_says_so(cifar_root, tmp_path):
    out = tmp_path / "out"
    env = os.environ | {
        "CIFARLENS_DATA_DIR": str(cifar_root),
        "OUT": str(out),
        "PYTHON": sys.executable,
        "BUDGET_S": "0",
    }
    result = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", "--dry-run"],
        cwd=ROOT,
        env=env,
        text=True,
        capture_output=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 1 and "the check is incomplete" in result.stdout + result.stderr
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["runs"] == report["timed"] == [] and report["bench"] is None and not report["failed"]
    assert report["skipped"][:2] == ["fast seed 0 (subset)", "airbench94 seed 0 (subset)"]
    assert report["summary"]["fast_vs_airbench94_time"] is None
    assert "skipped fast seed 0 (subset)" in (out / "gpu_check.md").read_text()


def test_gpu_check_refuses_a_limit_that_is_not_seconds_before_running_anything(tmp_path):
    for limit in ("BUDGET_S", "TESTS_TIMEOUT_S"):
        env = os.environ | {"OUT": str(tmp_path / limit), "PYTHON": sys.executable, limit: "5min"}
        result = subprocess.run(
            ["bash", "benchmarks/gpu_check.sh", "--dry-run"],
            cwd=ROOT,
            env=env,
            text=True,
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert_one_line_error(result, f"{limit}=5min is not a whole number of seconds")
        assert not (tmp_path / limit).exists()  # stopped before the output folder was made


def test_fast_recipes_score_the_test_split_at_the_end_only_on_cuda(monkeypatch):
    from cifarlens.training.recipes import device_defaults

    assert device_defaults("fast", "auto") == {} or torch.cuda.is_available()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert device_defaults("fast", "auto") == device_defaults("airbench94", "cuda") == {"eval_test_every_epoch": False}
    assert device_defaults("fast", "cpu") == device_defaults("resnet18", "cuda") == {}


def test_background_checkpoint_holds_the_state_of_its_moment(tmp_path):
    from cifarlens.run import ModelSpec, RunDir
    from cifarlens.training.saving import CheckpointWriter

    model = torch.nn.Linear(3, 2)
    spec = ModelSpec("linear", {}, 2, ("a", "b"), (0.5,) * 3, (0.25,) * 3)
    run = RunDir(tmp_path / "run")
    writer = CheckpointWriter(run, background=True)
    momentum = torch.ones(2)
    writer.save(1, model, spec, {"optimizer": {"momentum": momentum}})
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():  # training goes on while the thread writes
        model.weight.add_(1)
        momentum.add_(1)
    writer.wait()
    writer.close()
    ckpt = run.load_checkpoint()
    assert ckpt.epoch == 1 and same(ckpt.model_state, saved)
    assert torch.equal(ckpt.state["optimizer"]["momentum"], torch.ones(2))
