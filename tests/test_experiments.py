"""cifarlens.experiments: grid and Optuna sweeps (pruning, a study shared by two processes), compare, budget."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from cifarlens.errors import ConfigError, RunDirError
from cifarlens.experiments.compare import model_size, write_comparison
from cifarlens.experiments.sweep import budget_plan, grid_points, load_sweep, run_sweep
from cifarlens.models import create_model
from cifarlens.run import RunDir

ROOT = Path(__file__).resolve().parents[1]


def base_options(cifar_root, **overrides):
    """A tiny, fast trial: the tutorial net, 2 epochs, one thread."""
    return {
        "model": "tutorial",
        "epochs": 2,
        "batch_size": 50,
        "optimizer": "sgd",
        "lr": 0.05,
        "augment": "flip",
        "data_dir": str(cifar_root),
        "download": False,
        "precision": "fp32",
        "channels_last": False,
        "threads": 1,
        "report": False,
    } | overrides


def write_sweep(path: Path, **content) -> Path:
    content = {"val_size": 100, "finalists": 1} | content
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


def sweep_quietly(path: Path) -> dict:
    """Run the sweep in ``path`` without the synthetic data's MD5 warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run_sweep(load_sweep(path))


def read_trials(out: Path) -> list[dict]:
    with open(out / "trials.csv", newline="") as f:
        return list(csv.DictReader(f))


def cli(*args):
    """Run the CLI in this process (a subprocess would spend seconds importing torch)."""
    from typer.testing import CliRunner

    from cifarlens.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def grid_sweep(cifar_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("grid") / "sweep"
    path = write_sweep(
        out.parent / "grid.yaml",
        base=base_options(cifar_root),
        method="grid",
        params={"lr": [0.05, 0.0001], "batch_size": [25, 50]},
        finalists=2,
        out=str(out),
    )
    result = sweep_quietly(path)
    return path, out, result


def test_grid_sweep_tunes_on_val_and_scores_only_finalists_on_test(grid_sweep):
    _, out, result = grid_sweep
    rows = read_trials(out)
    assert [(r["batch_size"], r["lr"]) for r in rows] == [
        ("25", "0.05"),
        ("25", "0.0001"),
        ("50", "0.05"),
        ("50", "0.0001"),
    ]
    assert all(r["state"] == "complete" and r["val_acc"] for r in rows)
    finalists = [r for r in rows if r["test_acc"]]
    assert len(finalists) == 2
    best_val = sorted((float(r["val_acc"]) for r in rows), reverse=True)[:2]
    assert sorted((float(r["val_acc"]) for r in finalists), reverse=True) == best_val
    for row in rows:
        run = Path(row["run"])
        metrics = RunDir(run).read_metrics()
        assert all("test_acc" not in m for m in metrics), "the test split was scored during a trial"
        assert metrics[-1]["val_acc"] == pytest.approx(float(row["val_acc"]))
        summary = json.loads((run / "summary.json").read_text())
        assert ("test" in summary) == bool(row["test_acc"])
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert config["val_size"] == 100 and config["evaluate"] is False
    sweep_json = json.loads((out / "sweep.json").read_text())
    assert sweep_json["best"]["val_acc"] == best_val[0] and result["states"] == {"complete": 4}
    table = (out / "compare.md").read_text()
    assert table.startswith("| run |") and "test_acc" in table and (out / "compare.png").stat().st_size > 0


def test_grid_sweep_resumes_and_refuses_a_changed_sweep(grid_sweep, cifar_root, tmp_path):
    path, out, _ = grid_sweep
    weights = out / "trials" / "001" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    # A trial killed after its first epoch: roll it back to that checkpoint and drop its weights.
    killed = out / "trials" / "003"
    (killed / "checkpoint" / "latest.json").write_text(
        json.dumps({"epoch": 1, "weights": "epoch-0001.safetensors", "state": "epoch-0001.state.pt"})
    )
    (killed / "model.safetensors").unlink()
    # ... and the data has moved since: the same sweep, pointed at the new folder, resumes from there.
    moved = shutil.copytree(cifar_root, tmp_path / "moved")
    spec = yaml.safe_load(path.read_text())
    spec["base"]["data_dir"] = str(moved)
    sweep_quietly(write_sweep(tmp_path / "moved.yaml", **spec))
    assert weights.stat().st_mtime_ns == before, "a finished trial was trained again"
    assert (killed / "model.safetensors").is_file()
    assert [r["epoch"] for r in RunDir(killed).read_metrics()] == [1, 2]
    config = yaml.safe_load((killed / "config.yaml").read_text())
    assert config["data_dir"] == str((moved / "cifar-10-batches-py").resolve())
    changed = yaml.safe_load(path.read_text())
    changed["base"]["epochs"] = 3
    with pytest.raises(ConfigError, match="was run with other options \\(epochs"):
        run_sweep(load_sweep(write_sweep(tmp_path / "changed.yaml", **changed)))


def test_optuna_prunes_hopeless_trials(cifar_root, tmp_path):
    out = tmp_path / "opt"
    path = write_sweep(
        tmp_path / "opt.yaml",
        base=base_options(cifar_root, epochs=3),
        method="optuna",
        params={"lr": {"type": "categorical", "choices": [0.05, 1e-7]}},
        trials=6,
        prune_startup=2,
        prune_warmup=0,
        out=str(out),
    )
    result = sweep_quietly(path)
    rows = read_trials(out)
    assert len(rows) == 6 and (out / "study.db").is_file()
    pruned = [r for r in rows if r["state"] == "pruned"]
    assert pruned, rows
    assert all(r["lr"] == "1e-07" and int(r["epochs"]) < 3 for r in pruned)  # a learning rate of 1e-7 learns nothing
    assert all(int(r["epochs"]) == 3 for r in rows if r["state"] == "complete")
    assert result["best"]["params"] == {"lr": 0.05}
    # Resuming the finished study runs nothing new.
    assert sweep_quietly(path)["trials"] == 6


def test_two_processes_share_one_sqlite_study(cifar_root, tmp_path):
    two_workers_share_one_study(f"sqlite:///{tmp_path / 'shared.db'}", cifar_root, tmp_path)


def two_workers_share_one_study(storage: str, cifar_root: Path, tmp_path: Path) -> None:
    """Two `cifarlens sweep --worker-trials 2` processes on one study at ``storage``: the study ends with its 4
    trials, 2 from each worker, and the sweep's files agree with it, written once by the worker that ended last."""
    import optuna

    path = write_sweep(
        tmp_path / "shared.yaml",
        base=base_options(cifar_root, epochs=1),
        method="optuna",
        params={
            "lr": {"type": "float", "low": 1e-3, "high": 0.1, "log": True},
            "batch_size": {"type": "int", "low": 25, "high": 50},
        },
        trials=4,
        pruning=False,
        storage=storage,
        study_name="shared",
        out=str(tmp_path / "sweep"),
    )
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "cifarlens.cli", "sweep", str(path), "--worker-trials", "2"]
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    for proc, (stdout, stderr) in zip(procs, outputs):
        assert proc.returncode == 0, stderr
    study = optuna.load_study(study_name="shared", storage=storage)
    trials = study.get_trials()
    assert sorted(t.number for t in trials) == list(range(4))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    workers = [t.user_attrs["worker"] for t in trials]
    assert len(set(workers)) == 2 and all(workers.count(w) == 2 for w in set(workers))
    # The files agree with the study, and the finalists were scored once, by the worker that ended last.
    finishers = [stdout for stdout, _ in outputs if "finalists on the test split" in stdout]
    assert len(finishers) == 1, [o for o, _ in outputs]
    last = max(trials, key=lambda t: (t.datetime_complete, t.number))
    other = next(o for o, _ in outputs if o != finishers[0])
    assert f"trial {last.number}" in finishers[0], finishers[0]
    assert "scores the finalists" in other or "a worker still running adds the rest" in other, other  # it leaves
    out = tmp_path / "sweep"
    with open(out / "trials.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(int(r["trial"]) for r in rows) == [0, 1, 2, 3]
    assert all(r["state"] == "complete" and r["epochs"] == "1" for r in rows), rows
    result = json.loads((out / "sweep.json").read_text())
    assert result["states"] == {"complete": 4} and len(result["finalists"]) == 1
    # Running the sweep again after everything ended changes nothing.
    files = {p: p.read_bytes() for p in (out / "trials.csv", out / "sweep.json", out / "compare.md")}
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0 and "the sweep is complete" in again.stdout, again.stdout + again.stderr
    assert {p: p.read_bytes() for p in files} == files


def test_compare_cli_table_files_and_bad_input(grid_sweep, tmp_path):
    _, out, _ = grid_sweep
    runs = [out / "trials" / "000", out / "trials" / "003"]
    result = cli("compare", *runs, "--out", tmp_path / "cmp")
    assert result.exit_code == 0, result.stderr
    header = result.stdout.splitlines()[0]
    # No data_dir column although 003 was resumed from a moved copy of the data (the test above).
    assert header.startswith("| run | batch_size | lr | test_acc | val_acc | params | macs |")
    with open(tmp_path / "cmp.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["lr"] for r in rows] == ["0.05", "0.0001"] and [r["batch_size"] for r in rows] == ["25", "50"]
    params, _ = model_size(RunDir(runs[0]))
    assert int(rows[0]["params"]) == sum(p.numel() for p in create_model("tutorial").parameters()) == params
    assert float(rows[0]["val_acc"]) == pytest.approx(RunDir(runs[0]).metrics[-1]["val_acc"])
    assert (tmp_path / "cmp.png").stat().st_size > 0 and (tmp_path / "cmp.md").read_text().startswith("| run |")
    bad = cli("compare", runs[0], tmp_path)
    assert bad.exit_code == 2 and "not a cifarlens run directory" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr
    with pytest.raises(RunDirError, match="not found"):
        write_comparison([tmp_path / "missing"])


def test_sweep_config_errors_are_one_line(cifar_root, tmp_path):
    result = cli("sweep", write_sweep(tmp_path / "bad.yaml", params={"lr": [0.1]}, trails=3))
    assert result.exit_code == 2 and "unknown option 'trails'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    missing = cli("sweep", tmp_path / "nope.yaml")
    assert missing.exit_code == 2 and "check the path given to cifarlens sweep" in missing.stderr

    def fails(match, **content):
        with pytest.raises(ConfigError, match=match):
            run_sweep(load_sweep(write_sweep(tmp_path / "bad.yaml", **content)))

    fails("unknown sweep parameter 'learning_rate'", params={"learning_rate": [0.1]})
    fails("needs a non-empty list", params={"lr": 0.1})
    fails("set by the sweep itself", params={"val_size": [10]})
    fails("which the sweep sets itself", base={"evaluate": True}, params={"lr": [0.1]})
    fails("needs {type: float", method="optuna", params={"lr": [0.1, 0.2]})
    fails(
        "unknown option 'not_an_option' in sweep base",
        base={"not_an_option": 1},
        params={"lr": [0.1]},
        out=str(tmp_path / "s"),
    )


def test_seed_table_example_and_budget_plan():
    sweep = load_sweep(ROOT / "examples" / "seed_table.yaml", {"out": "unused"})
    points = grid_points(sweep.params)
    assert (
        len(points) == 12 and {"model_args.batch_norm": False} in points and {"optimizer": "sgd", "lr": 0.01} in points
    )
    tight = budget_plan(load_sweep(ROOT / "examples" / "seed_table.yaml", {"budget": 30}))
    assert tight["subset"] == 500 and tight["epoch_scale"] < 1
    roomy = budget_plan(load_sweep(ROOT / "examples" / "seed_table.yaml", {"budget": 1e9}))
    assert roomy["subset"] == 45_000 and roomy["val_size"] == 5000 and roomy["epoch_scale"] == 1.0


def test_conv_blocks_switches_off_batchnorm_and_dropout():
    plain = create_model("conv_blocks", blocks=2, width=4, dropout=False, batch_norm=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    assert all(m.p == 0 for m in plain.modules() if isinstance(m, nn.Dropout))
    assert all(m.bias is not None for m in plain.modules() if isinstance(m, nn.Conv2d))
    default = create_model("conv_blocks", blocks=2, width=4)
    assert any(isinstance(m, nn.BatchNorm2d) for m in default.modules())
    assert plain(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
