"""Each kind of change is one entry in one place: a fake model, attribution method, command and run file, each
added where README's "For contributors" table says, and found where a user meets it."""

from __future__ import annotations

import inspect
import re
import warnings
from pathlib import Path

import pytest
import torch
import typer
from torch import nn
from typer.testing import CliRunner

import cifarlens.cli.main as cli_main
from cifarlens.cli import app
from cifarlens.config import build_config
from cifarlens.console import user_errors
from cifarlens.errors import CifarlensError, ConfigError
from cifarlens.explain import attribute
from cifarlens.explain.attribution import METHODS, Method, check_methods, register
from cifarlens.models import registry
from cifarlens.models.registry import register_model
from cifarlens.report import write_report
from cifarlens.run import RunDir
from cifarlens.training import TrainConfig, recipe_options, train

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def contributors_row(kind: str) -> str:
    """The README row of the "where each kind of change goes" table for a new ``kind``."""
    readme = (ROOT / "README.md").read_text()
    readme = readme[readme.index("## For contributors") :]
    found = re.search(rf"^\| {re.escape(kind)} \|.*$", readme, re.M)
    assert found, f"README's contributors table has no row for a new {kind}"
    return found.group(0)


def assert_row_names_the_file_of(kind: str, thing) -> None:
    """The README row for ``kind`` names the file that defines ``thing`` (relative to src/cifarlens)."""
    source = Path(inspect.getsourcefile(thing)).resolve().relative_to(ROOT / "src" / "cifarlens")
    assert f"`{source.as_posix()}`" in contributors_row(kind), (kind, source)


class Doubler(nn.Module):
    def __init__(self, num_classes: int, width: int):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc(self.flatten(self.pool(self.features(x))))


@pytest.fixture
def fake_model(monkeypatch):
    """``extending_net`` registered for this test only."""
    monkeypatch.setattr(registry, "_MODELS", dict(registry._MODELS))

    @register_model(classifier="fc", cam_layer="features", probe_stages=("features.1", "flatten"))
    def extending_net(num_classes: int = 10, width: int = 4) -> nn.Module:
        """A one-conv net that the extending test registers."""
        return Doubler(num_classes, width)

    return "extending_net"


def tiny_run(cifar_root: Path, out: Path, model: str, **options) -> Path:
    settings = {"model": model, "epochs": 1, "batch_size": 50, "data_dir": str(cifar_root), "download": False,
                "out": str(out), "precision": "fp32", "evaluate": False, "report": False, "threads": 1,
                "channels_last": False, "augment": "flip"}  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return train(build_config(TrainConfig, recipe_options("seed"), settings | options))


def test_a_new_model_is_one_registered_function(fake_model, cifar_root, tmp_path):
    assert_row_names_the_file_of("model", register_model)
    listed = runner.invoke(app, ["models"], env={"COLUMNS": "200"})
    assert listed.exit_code == 0 and fake_model in listed.output and "A one-conv net" in listed.output
    with pytest.raises(ConfigError, match="width"):  # its keyword arguments are validated as --model-args
        build_config(TrainConfig, {"model": fake_model, "model_args": {"depth": 3}})
    run = tiny_run(cifar_root, tmp_path / "run", fake_model, model_args={"width": 6})
    model, spec = RunDir(run).load_model()  # rebuilt from the run alone
    assert spec.name == fake_model and model.fc.in_features == 6
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


@pytest.fixture
def fake_method():
    """``brightness`` registered for this test only."""
    register("brightness", "test", "how bright each pixel is")(lambda inputs: inputs.x.abs().sum(1))
    yield "brightness"
    METHODS.pop("brightness")


def test_a_new_attribution_method_is_one_registered_function(run_dir, fake_method):
    assert_row_names_the_file_of("attribution method", register)
    assert isinstance(METHODS["brightness"], Method) and check_methods(["brightness"]) == ["brightness"]
    with pytest.raises(CifarlensError, match="unknown attribution method nope; choose from: .*brightness"):
        check_methods(["nope"])
    result = attribute(run_dir, methods=["brightness"], index="0,1")
    assert {row["method"] for row in result.rows} == {"brightness"} and len(result.rows) == 2
    written = result.write(RunDir(run_dir).explain_dir("attribute"))
    assert all(path.is_file() for path in written)


def test_a_new_command_is_one_typer_function(monkeypatch):
    assert_row_names_the_file_of("command", cli_main)
    monkeypatch.setattr(app, "registered_commands", list(app.registered_commands))  # the command goes afterwards

    @app.command("extending-hello")
    @user_errors
    def hello(name: str = typer.Option("world", help="who to greet")) -> None:
        """Say hello (a command the extending test adds)."""
        if not name:
            raise CifarlensError("--name is empty; pass a name")
        typer.echo(f"hello {name}")

    helped = runner.invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert "extending-hello" in helped.output and "Say hello" in helped.output
    assert runner.invoke(app, ["extending-hello", "--name", "you"]).output == "hello you\n"
    refused = runner.invoke(app, ["extending-hello", "--name", ""])
    assert refused.exit_code == 2 and refused.output.strip() == "error: --name is empty; pass a name"


def test_a_new_run_file_is_one_name_in_rundir(run_dir, monkeypatch, tmp_path):
    assert_row_names_the_file_of("run file", RunDir)
    run = RunDir(run_dir)
    with pytest.raises(ValueError, match="EXPLAIN_COMMANDS"):
        run.explain_dir("extending")
    monkeypatch.setattr(RunDir, "EXPLAIN_COMMANDS", RunDir.EXPLAIN_COMMANDS + ("extending",))
    (run.explain_dir("extending") / "numbers.json").write_text('{"answer": 42}\n')
    assert run.explain_dir("extending") / "numbers.json" in run.explain_files()
    page = write_report([run_dir], tmp_path / "report.html").read_text()
    assert "extending/numbers.json" in page and "42" in page  # the report shows what the new command wrote
