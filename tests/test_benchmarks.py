"""Every script in benchmarks/ runs, at tiny sizes, on the synthetic data and one shared tiny run, and writes
what its section of BENCHMARKS.md reads; and every results file BENCHMARKS.md or README.md names exists.

(frontier.py, gpu_check.py and gpu_data.py have tests of their own: test_benchmarks_frontier.py and test_cuda.py.)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import assert_one_line_error

from cifarlens.config import build_config
from cifarlens.training import TrainConfig, recipe_options, train

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
# Named in the text but never written, each with the reason the text gives.
NOT_WRITTEN = {
    "rank_resnet18_n500.json": "the ResNet-18 ranking was stopped after 64 images; its partial table is kept as n64",
    "seed_reports_M_epyc_bf16.json": "M stands for each model, listed in the brace form beside it",
}


@pytest.fixture(scope="module")
def tiny_run(cifar_root, tmp_path_factory) -> Path:
    """The fast recipe on a narrow airnet, one epoch on the synthetic data, exported to ONNX (fp32 + int8)."""
    out = tmp_path_factory.mktemp("bench") / "fast"
    options = {
        "data_dir": str(cifar_root),
        "download": False,
        "out": str(out),
        "report": False,
        "epochs": 1,
        "early_epochs": 1,
        "whiten_bias_epochs": 1.0,
        "model_args": {"width": 8, "wide": 16},
    }
    train(build_config(TrainConfig, recipe_options("fast"), options))
    # One epoch on 500 images leaves a net near chance, whose int8 graph may lose a few of the 50 images: the
    # benchmarks below time it, they do not judge it (tests/test_export.py checks the limit).
    export = ("export", str(out), "--quantize", "int8", "--test-images", "50", "--max-int8-drop", "100")
    script(cifar_root, "-m", "cifarlens.cli", *export)
    return out


def copy_of(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / run.name))


def script(data: Path, *args: str, cwd: Path = ROOT, timeout: int = 300) -> str:
    """Run ``python ARGS`` on the synthetic data; its output, or a failed assertion showing it."""
    env = os.environ | {"CIFARLENS_DATA_DIR": str(data), "COLUMNS": "200", "TORCHDYNAMO_DISABLE": "1"}
    proc = subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, text=True, capture_output=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, f"{args} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def named_results(text: str) -> set[str]:
    """File names under benchmarks/results/ that a text names, brace lists (``a_{x,y}.json``) expanded."""
    names = set()
    for path in re.findall(r"results/([A-Za-z0-9_.{},-]+\.(?:json|png|csv|md))", text):
        brace = re.search(r"\{([^}]*)\}", path)
        names |= (
            {path[: brace.start()] + x + path[brace.end() :] for x in brace.group(1).split(",")} if brace else {path}
        )
    return names


def test_every_results_file_the_docs_name_exists():
    named = named_results((ROOT / "BENCHMARKS.md").read_text() + (ROOT / "README.md").read_text())
    assert len(named) > 20  # the pattern still finds the references
    missing = sorted(n for n in named - NOT_WRITTEN.keys() if not (BENCH / "results" / n).is_file())
    assert not missing, f"BENCHMARKS.md or README.md names results files that are not committed: {missing}"


def test_airnet_step(cifar_root):
    out = script(
        cifar_root, "benchmarks/airnet_step.py", "--batch", "8", "--repeats", "1", "--width", "8", "--wide", "16"
    )
    assert out.count("| 32 |") == 2 and out.count("| 24 |") == 2 and "frozen / trained" in out


def test_behaviour_pin(cifar_root, tmp_path):
    script(cifar_root, "benchmarks/behaviour_pin.py", "--out", str(tmp_path), "--only", "fast", "--subset", "300")
    pin = json.loads((tmp_path / "pin.json").read_text())["fast"]
    assert len(pin["weights_sha256"]) == 64 and len(pin["metrics"]) == 2


def test_checkpoint_cost(cifar_root, tmp_path):
    out = tmp_path / "cost.json"
    script(
        cifar_root,
        "benchmarks/checkpoint_cost.py",
        "--recipes",
        "tutorial",
        "--repeats",
        "1",
        "--data-dir",
        str(cifar_root),
        "--out",
        str(out),
    )
    (row,) = json.loads(out.read_text())["rows"]
    assert row["megabytes"] > 0 and 0 < row["share"] < 1


def test_cpu_peak(cifar_root, tmp_path):
    out = tmp_path / "peak.json"
    script(
        cifar_root,
        "benchmarks/cpu_peak.py",
        "--repeats",
        "1",
        "--seconds",
        "0.1",
        "--matmul-n",
        "256",
        "--batch",
        "8",
        "--out",
        str(out),
    )
    assert all(v > 0 for v in json.loads(out.read_text())["gflops_median"].values())


def test_deploy_speed(cifar_root, tiny_run, tmp_path):
    run, out = copy_of(tiny_run, tmp_path), tmp_path / "deploy.json"
    printed = script(
        cifar_root,
        "benchmarks/deploy_speed.py",
        "--fast-run",
        str(run),
        "--resnet18-run",
        str(run),
        "--batch-sizes",
        "1,8",
        "--seconds",
        "0.05",
        "--test-images",
        "50",
        "--max-int8-drop",
        "100",
        "--backends",
        "torch,onnxruntime",
        "--out",
        str(out),
    )
    assert "| fast (airnet) | onnxruntime |" in printed and "x fp32 matmul" in printed
    assert {r["backend"] for r in json.loads(out.read_text())["reports"]["resnet18"]["results"]} == {
        "torch",
        "onnxruntime",
    }


def test_explain_speed(cifar_root, tiny_run, tmp_path):
    out = tmp_path / "explain.json"
    script(
        cifar_root,
        "benchmarks/explain_speed.py",
        "--run",
        str(tiny_run),
        "--quick",
        "--n",
        "120",
        "--cam-images",
        "2",
        "--methods",
        "gradcam",
        "--out",
        str(out),
    )
    result = json.loads(out.read_text())
    assert result["images"] == 100 and result["extract_images_per_s"] > 0 and result["cam"]  # the test split has 100


def test_explain_speed_rank(cifar_root, tiny_run, tmp_path):
    run, out = copy_of(tiny_run, tmp_path), tmp_path / "rank.json"
    script(
        cifar_root,
        "benchmarks/explain_speed.py",
        "--rank",
        "--run",
        str(run),
        "--rank-n",
        "4",
        "--sanity-n",
        "2",
        "--methods-rank",
        "saliency,gradcam",
        "--out",
        str(out),
    )
    assert out.is_file() and "saliency" in out.read_text()


def test_explore_speed(cifar_root, tiny_run, tmp_path):
    run, out = copy_of(tiny_run, tmp_path), tmp_path / "explore.json"
    script(
        cifar_root,
        "benchmarks/explore_speed.py",
        "--run",
        str(run),
        "--methods",
        "saliency",
        "--images",
        "1",
        "--out",
        str(out),
    )
    rows = json.loads(out.read_text())["rows"]
    assert [r["methods"] for r in rows] == ["saliency", "saliency"] and all(r["median_s"] > 0 for r in rows)


def test_import_any_model(cifar_root, tmp_path):
    out = tmp_path / "import.json"
    script(
        cifar_root,
        "benchmarks/import_any_model.py",
        "--subset",
        "100",
        "--epochs",
        "1",
        "--batch-size",
        "50",
        "--rank-n",
        "2",
        "--rank-methods",
        "saliency,gradcam",
        "--bench-seconds",
        "0.2",
        "--no-check",
        "--workdir",
        str(tmp_path),
        "--out",
        str(out),
        timeout=900,
    )
    result = json.loads(out.read_text())
    for side in ("imported", "cifarlens_resnet18"):
        assert result[side]["test_n"] == 100 and {r["method"] for r in result[side]["rank_top"]} >= {"saliency"}
        assert [row["backend"] for row in result[side]["bench"]] == ["torch", "onnxruntime"]
    assert any("classifier: fc_out" in line for line in result["import_output"])


def test_keras_vs_torch(cifar_root, tmp_path):
    out = tmp_path / "kvt.json"
    script(
        cifar_root,
        "benchmarks/keras_vs_torch.py",
        "--epochs",
        "1",
        "--subset",
        "200",
        "--val-size",
        "100",
        "--no-bench",
        "--workdir",
        str(tmp_path / "runs"),
        "--out",
        str(out),
        timeout=600,
    )
    result = json.loads(out.read_text())
    assert result and "PyTorch" in json.dumps(result) and "Keras" in json.dumps(result)


def test_onnx_int8_options(cifar_root, tiny_run, tmp_path):
    run, out = copy_of(tiny_run, tmp_path), tmp_path / "int8.json"
    script(
        cifar_root,
        "benchmarks/onnx_int8_options.py",
        "--run",
        str(run),
        "--batch-size",
        "8",
        "--rounds",
        "1",
        "--seconds",
        "0.2",
        "--out",
        str(out),
    )
    variants = json.loads(out.read_text())["variants"]
    assert "torch eager fp32" in variants and len(variants) > 4
    assert all(0 <= v["accuracy"] <= 100 and v["median_ratio"] > 0 for v in variants.values())


def test_seed_models(cifar_root, tmp_path):
    out = tmp_path / "seed.json"
    printed = script(
        cifar_root,
        "benchmarks/seed_models.py",
        "--data-dir",
        str(cifar_root),
        "--models",
        "tutorial",
        "--timing-subset",
        "100",
        "--full",
        "tutorial",
        "--seeds",
        "0",
        "--epochs",
        "1",
        "--val-size",
        "100",
        "--out",
        str(out),
    )
    result = json.loads(out.read_text())
    assert result["timing"] and result["accuracy"] and "tutorial" in printed


def test_time_to_accuracy(cifar_root, tmp_path):
    out = tmp_path / "tta.json"
    script(
        cifar_root,
        "benchmarks/time_to_accuracy.py",
        "--recipes",
        "fast",
        "--seeds",
        "0",
        "--reference",
        "",
        "--baselines",
        "",
        "--targets",
        "0.1",
        "--workdir",
        str(tmp_path / "runs"),
        "--out",
        str(out),
        "--train-args",
        "--epochs 1 --early-epochs 1 --whiten-bias-epochs 1 --model-args '{width: 8, wide: 16}'",
    )
    stored = json.loads(out.read_text())
    assert [(r["recipe"], r["seed"]) for r in stored["runs"]] == [("fast", 0)] and stored["summary"]


def test_quickstart_time_reads_the_readme_command_and_times_its_steps(tiny_run, tmp_path):
    sys.path.insert(0, str(BENCH))
    try:
        import quickstart_time
    finally:
        sys.path.remove(str(BENCH))
    command = quickstart_time.quickstart_command(ROOT / "README.md")
    assert command.startswith("python3 -m venv .venv") and "cifarlens train" in command
    steps = quickstart_time.timed_steps("true && sleep 0.2 && echo train", tmp_path, dict(os.environ), [])
    assert [s["step"] for s in steps] == ["true", "sleep 0.2", "echo train"] and steps[1]["seconds"] >= 0.2
    parts = quickstart_time.train_parts(tiny_run, train_wall=1e3)
    assert parts["training_steps_s"] > 0 and parts["startup_data_plots_report_s"] > 0


def test_gpu_check_versions_needs_the_data_named(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "CIFARLENS_DATA_DIR"}
    proc = subprocess.run(
        ["bash", "benchmarks/gpu_check_versions.sh"],
        cwd=ROOT,
        env=env,
        text=True,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert_one_line_error(proc, "CIFARLENS_DATA_DIR is not set")


def test_robustness_benchmark(cifar_root, tmp_path):
    out = tmp_path / "robustness.json"
    script(
        cifar_root,
        "benchmarks/robustness.py",
        "--variants",
        "fast,fast-augmix",
        "--seeds",
        "0",
        "--val-size",
        "100",
        "--epochs",
        "1",
        "--corruptions",
        "gaussian_noise,contrast",
        "--severities",
        "1,5",
        "--timing-backends",
        "torch",
        "--workdir",
        str(tmp_path / "work"),
        "--out",
        str(out),
        timeout=900,
    )
    result = json.loads(out.read_text())
    assert [(r["variant"], r["seed"]) for r in result["runs"]] == [("fast", 0), ("fast-augmix", 0)]
    run = result["runs"][1]
    assert run["train_flags"][:4] == ["--recipe", "fast", "--augment", "crop,altflip,augmix"]
    assert set(run["corruptions"]) == {"gaussian_noise", "contrast"} and 0 <= run["ece_after"] <= 1
    assert result["paired_against_fast"]["fast-augmix"]["seeds"] == [0]
    assert result["timing"][0]["backend"] == "torch" and result["timing"][0]["cells"] == 4
