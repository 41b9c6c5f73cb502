"""The package as a whole: imports only down the layers, no import circles, ``python -m cifarlens``, one line
per epoch in a pipe."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

from conftest import cifarlens

SRC = Path(__file__).resolve().parents[1] / "src"


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """cifarlens module -> the cifarlens modules it imports anywhere in its body (functions included)."""
    modules = {module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from pkg import sub` imports the submodule when there is one, else a name of pkg
                targets = [
                    f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                    for a in node.names
                ]
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_circles_even_through_function_level_imports():
    graph = import_graph()
    assert "cifarlens.run" in graph["cifarlens.training.trainer"]  # function-level imports are read too:
    assert "cifarlens.training.linear_probe" in graph["cifarlens.training.trainer"]
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_python_dash_m_cifarlens_runs_the_cli():
    out = subprocess.run([sys.executable, "-m", "cifarlens", "--version"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("cifarlens "), out.stderr


def test_training_output_to_a_pipe_has_one_line_per_epoch(cifar_root, tmp_path):
    result = cifarlens(
        "train",
        "--recipe",
        "tutorial",
        "--epochs",
        "2",
        "--batch-size",
        "50",
        "--data-dir",
        str(cifar_root),
        "--no-download",
        "--out",
        str(tmp_path / "run"),
        "--no-report",
        "--threads",
        "1",
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    epochs = [i for i, line in enumerate(lines) if line.startswith("epoch ")]
    assert len(epochs) == 2 and epochs[1] == epochs[0] + 1, result.stdout
    assert "" not in lines[: epochs[1] + 1], result.stdout


def test_every_exported_name_resolves():
    for name in LAYERS[LAYERS.index("data") : -1]:
        package = importlib.import_module(f"cifarlens.{name}")
        for exported in getattr(package, "__all__", []):
            assert getattr(package, exported) is not None, f"{package.__name__}.{exported}"


# Loaded only by the capability that needs them: training, the command line and --help never pay for them.
CAPABILITY_LIBRARIES = (
    "captum",
    "pytorch_grad_cam",
    "onnx",
    "onnxruntime",
    "openvino",
    "tensorflow",
    "keras",
    "optuna",
    "fastapi",
    "uvicorn",
    "timm",
    "openTSNE",
    "umap",
    "sklearn",
    "matplotlib",
    "cv2",
    "skimage",
    "torchmetrics",
)


def test_training_and_the_command_line_load_no_capability_library():
    code = (
        "import sys, cifarlens.cli, cifarlens.training; "
        f"print(sorted(m for m in {CAPABILITY_LIBRARIES!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


# The layers, bottom up: a module may import only from its own layer and those below it.
LAYERS = (
    "errors",
    "io",
    "config",
    "device",
    "console",
    "data",
    "models",
    "run",
    "training",
    "evaluation",
    "importing",
    "explain",
    "experiments",
    "deploy",
    "robustness",
    "report",
    "explore",
    "cli",
)


def layer_of(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:  # the package itself holds only __version__
        return 0
    if parts[1] == "__main__":  # `python -m cifarlens` runs the command line
        return len(LAYERS) - 1
    return LAYERS.index(parts[1])


def test_every_import_points_down_the_layers():
    upward = [
        f"{module} ({LAYERS[layer_of(module)]}) imports {target} ({LAYERS[layer_of(target)]})"
        for module, targets in sorted(import_graph().items())
        for target in sorted(targets)
        if layer_of(target) > layer_of(module)
    ]
    assert not upward, "\n".join(upward)


def test_the_code_is_formatted_and_lint_free():
    root = SRC.parent
    for command in (["format", "--check"], ["check"]):
        out = subprocess.run(
            [sys.executable, "-m", "ruff", *command, "src", "tests", "benchmarks"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, (
            f"ruff {' '.join(command)}: fix with `ruff format` / `ruff check --fix`\n{out.stdout}"
        )
