"""Open what ``cifarlens import`` is pointed at: a factory in a .py file or an installed module, a TorchScript
file, a ``torch.export`` program, or a model name (registered, torchvision or ``timm:``) with weights."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cifarlens.errors import ConfigError, first_line
from cifarlens.importing.config import ImportConfig
from cifarlens.io import sha256_file
from cifarlens.models import create_model
from cifarlens.models.imported import (
    IMPORTED_PREFIX,
    OnnxModule,
    call_factory,
    find_factory,
    load_graph_file,
    load_source,
    module_factory,
    package_of,
)
from cifarlens.models.state_dicts import fit_state_dict, read_weights_file
from cifarlens.run import RunDir

SOURCE_DIR = RunDir.SOURCE  # where the run keeps the copies
GRAPH_SUFFIXES = (".pt", ".pth", ".ts", ".jit", ".torchscript")


@dataclass
class Opened:
    """A model read from the user's files, before its run is written."""

    model: nn.Module  # eval mode, weights loaded
    name: str  # the ModelSpec name: imported:KIND, or a registered / timm: name
    kwargs: dict[str, Any]  # the ModelSpec kwargs that rebuild it
    copies: dict[str, Path] = field(default_factory=dict)  # path in the run -> the file copied there
    module_types: dict[str, str] = field(default_factory=dict)  # module -> class name, where modules lost theirs
    what: str = ""  # one line saying what was opened


def open_source(cfg: ImportConfig) -> Opened:
    """The model ``cfg.source`` names, with ``cfg.weights`` loaded into it."""
    source = cfg.source
    if source.endswith(".onnx"):
        return _open_onnx(Path(source), cfg)
    if ":" in source and not source.startswith(("timm:", "keras:")):
        where, factory = source.rsplit(":", 1)
        if where.endswith(".py"):
            return _open_python(Path(where), factory, cfg)
        return _open_module(where, factory, cfg)
    if source.endswith(".pt2"):
        return _open_graph(Path(source), "export", cfg)
    if source.endswith(GRAPH_SUFFIXES) or Path(source).is_file():
        return _open_graph(Path(source), "torchscript", cfg)
    return _open_named(source, cfg)


def _open_python(path: Path, factory: str, cfg: ImportConfig) -> Opened:
    module, siblings = load_source(path, cfg.trust_code)
    model = call_factory(find_factory(module, factory, str(path)), cfg.model_args, factory)
    folder = path.parent.resolve()
    copies = {f"{SOURCE_DIR}/{path.name}": path.resolve()} | {
        f"{SOURCE_DIR}/{file.relative_to(folder).as_posix()}": file for file in siblings
    }
    kwargs = {
        "file": f"{SOURCE_DIR}/{path.name}",
        "factory": factory,
        "args": cfg.model_args,
        "files": {name: sha256_file(file) for name, file in copies.items()},
    }
    _load_weights(model, cfg)
    return Opened(model, f"{IMPORTED_PREFIX}python", kwargs, copies, what=f"{path.name}:{factory}")


def _open_module(module: str, factory: str, cfg: ImportConfig) -> Opened:
    model = call_factory(module_factory(module, factory), cfg.model_args, factory)
    package, version = package_of(module)
    kwargs = {"module": module, "factory": factory, "args": cfg.model_args, "package": package, "version": version}
    _load_weights(model, cfg)
    return Opened(model, f"{IMPORTED_PREFIX}module", kwargs, what=f"{module}:{factory} ({package} {version})")


def _open_graph(path: Path, kind: str, cfg: ImportConfig) -> Opened:
    if not path.is_file():
        raise ConfigError(f"model file {path} not found")
    if kind == "torchscript" and _holds_tensors_only(path):
        raise ConfigError(
            f"{path} holds weights only, not a model; pass the code that builds it: "
            f"cifarlens import file.py:factory --weights {path} --trust-code"
        )
    model = load_graph_file(path, kind)
    copy = f"{SOURCE_DIR}/model{'.pt2' if kind == 'export' else '.torchscript.pt'}"
    kwargs = {"file": copy, "files": {copy: sha256_file(path)}}
    types = _exported_module_types(path) if kind == "export" else {}
    if cfg.weights:
        _load_weights(model, cfg)
    what = f"{path.name} ({'torch.export program' if kind == 'export' else 'TorchScript'})"
    return Opened(model, f"{IMPORTED_PREFIX}{kind}", kwargs, {copy: path.resolve()}, types, what)


def _open_onnx(path: Path, cfg: ImportConfig) -> Opened:
    if not path.is_file():
        raise ConfigError(f"ONNX file {path} not found")
    if cfg.weights:
        raise ConfigError(f"{path} holds its own weights; drop --weights")
    model = OnnxModule(path, cfg.onnx_input)
    copy = f"{SOURCE_DIR}/model.onnx"
    kwargs = {"file": copy, "files": {copy: sha256_file(path)}, "input": cfg.onnx_input}
    return Opened(model, f"{IMPORTED_PREFIX}onnx", kwargs, {copy: path.resolve()}, what=f"{path.name} (ONNX)")


def _open_named(name: str, cfg: ImportConfig) -> Opened:
    model = create_model(name, **cfg.model_args)
    if not cfg.weights:
        raise ConfigError(f"{name} needs the weights it was trained to: pass --weights FILE")
    _load_weights(model, cfg)
    return Opened(model, name, dict(cfg.model_args), what=f"{name} with {Path(cfg.weights).name}")


def _load_weights(model: nn.Module, cfg: ImportConfig) -> None:
    if cfg.weights:
        model.load_state_dict(fit_state_dict(read_weights_file(cfg.weights), model, cfg.weights))
    model.eval()


def _holds_tensors_only(path: Path) -> bool:
    """True for a torch.save file of plain tensors and dicts (a state dict or a checkpoint), not TorchScript."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.load's note that a TorchScript archive is torch.jit.load's
            torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # TorchScript archives (and anything else) are not plain tensor pickles
        return False
    return True


def _exported_module_types(path: Path) -> dict[str, str]:
    """Class name of each module of a torch.export program, read off its graph: unflattening leaves every
    module an ``InterpreterModule``, and the classifier is found by its class (``Linear``)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.load(str(path))
    except Exception as err:  # the loader raises many types
        raise ConfigError(f"{path} could not be read as a torch.export program: {first_line(err)}") from None
    types: dict[str, str] = {}
    for node in program.graph.nodes:
        for module_path, type_name in (node.meta.get("nn_module_stack") or {}).values():
            types.setdefault(module_path, str(type_name).rsplit(".", 1)[-1])
    return types
