"""Models trained elsewhere, rebuilt from what ``cifarlens import`` copied into their run.

A spec named ``imported:KIND`` keeps in its ``kwargs`` where the model's code or graph is, relative to the run
folder (``home``); the weights are always the run's model.safetensors, loaded into what is built here:

    imported:python       a factory in a .py file, copied to RUN/source/ with the sibling modules it imports
                          (their SHA-256 checked at every rebuild); runs code, so it needs trust
    imported:module       a factory in an installed package, recorded by module name and package version
    imported:torchscript  a TorchScript file copied to RUN/source/ (``torch.jit.load``)
    imported:export       a ``torch.export`` program (.pt2) copied to RUN/source/, unflattened into its modules
    imported:onnx         an ONNX graph copied to RUN/source/, run by onnxruntime (no gradients, no layers)

``bgr``, ``output: probabilities`` and a class ``order`` wrap the model in ``Adapted``, so that every tool feeds
it RGB and reads log-probabilities (whose softmax is the model's probabilities again) in the dataset's class order.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
import warnings
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import torch
from torch import nn

from cifarlens.errors import ConfigError, RunDirError, first_line
from cifarlens.io import sha256_file
from cifarlens.models.trust import TRUST_ENV, trusted

IMPORTED_PREFIX = "imported:"
KINDS = ("python", "module", "torchscript", "export", "onnx")


def is_imported(name: str) -> bool:
    return name.startswith(IMPORTED_PREFIX)


class Adapted(nn.Module):
    """``body`` fed BGR images (``bgr``), returning probabilities (``probabilities``) or its classes in another
    order (``order[c]``: the output of class ``c``), made to take RGB and return log-probabilities in the
    dataset's class order."""

    def __init__(self, body: nn.Module, bgr: bool = False, probabilities: bool = False, order: list[int] | None = None):
        super().__init__()
        self.body = body
        self.bgr = bgr
        self.probabilities = probabilities
        self.order = order

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x.flip(1) if self.bgr else x)
        if self.order is not None:
            out = out[:, self.order]
        return out.clamp_min(1e-12).log() if self.probabilities else out


def adapt(model: nn.Module, bgr: bool = False, output: str = "logits", order: list[int] | None = None) -> nn.Module:
    """``model`` as it is, or in ``Adapted`` when it takes BGR, outputs probabilities or orders classes otherwise."""
    probabilities = output == "probabilities"
    return Adapted(model, bgr, probabilities, order) if bgr or probabilities or order else model


def create_imported_model(name: str, home: Path | None, **kwargs: Any) -> nn.Module:
    """Rebuild the ``imported:KIND`` model whose files lie under the run folder ``home``."""
    kind = name[len(IMPORTED_PREFIX) :]
    if kind not in KINDS:
        raise RunDirError(f"unknown imported model kind {kind!r} (known: {', '.join(KINDS)}); re-import the model")
    if home is None:
        raise ValueError(f"{name} models are rebuilt from their run folder: pass it as home")
    bgr, output, order = bool(kwargs.get("bgr")), str(kwargs.get("output", "logits")), kwargs.get("order")
    if kind == "python":
        if not trusted():
            raise RunDirError(
                f"the model of {home} is Python code copied there at import; set {TRUST_ENV}=1 to run it, "
                "only if you trust that code"
            )
        check_hashes(home, kwargs["files"])
        factory = python_factory(home / kwargs["file"], kwargs["factory"], trust_code=False)
        model = call_factory(factory, kwargs.get("args") or {}, kwargs["factory"])
    elif kind == "module":
        _warn_on_version_change(kwargs)
        factory = module_factory(kwargs["module"], kwargs["factory"])
        model = call_factory(factory, kwargs.get("args") or {}, kwargs["factory"])
    elif kind == "onnx":
        check_hashes(home, kwargs["files"])
        model = OnnxModule(home / kwargs["file"], kwargs.get("input", "float32"))
    else:
        check_hashes(home, kwargs["files"])
        model = load_graph_file(home / kwargs["file"], kind)
    return adapt(model, bgr, output, order)


# -- code: a .py file or an installed module ------------------------------------------------------------------
def load_source(path: Path, trust_code: bool) -> tuple[ModuleType, list[Path]]:
    """Run the .py file ``path`` as a module; returns it and the files it imported from its own folder
    (modules or packages beside it), which a copy of the file needs to run elsewhere."""
    if not (trust_code or trusted()):
        raise ConfigError(
            f"{path} is Python code and importing it runs it: pass --trust-code (or set {TRUST_ENV}=1 for "
            "commands that read the run) only if you trust the file"
        )
    if not path.is_file():
        raise ConfigError(f"model source {path} not found; pass path/to/file.py:factory")
    folder = path.parent.resolve()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    before = set(sys.modules)
    module_name = f"_cifarlens_source_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look the module up while it runs
    sys.path.insert(0, str(folder))
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # the user's code can raise anything while it runs
        sys.modules.pop(module_name, None)
        raise ConfigError(f"{path} failed to import ({type(err).__name__}: {first_line(err)}); fix the file") from None
    finally:
        sys.path.remove(str(folder))
    siblings = []
    for name in sorted(set(sys.modules) - before - {module_name}):
        file = getattr(sys.modules[name], "__file__", None)
        if file and Path(file).resolve().is_relative_to(folder):
            siblings.append(Path(file).resolve())
            # Another run's source may hold a module of the same name: each import runs its own copy.
            del sys.modules[name]
    return module, siblings


def python_factory(path: Path, factory: str, trust_code: bool) -> Callable[..., nn.Module]:
    module, _ = load_source(path, trust_code)
    return find_factory(module, factory, str(path))


def module_factory(module: str, factory: str) -> Callable[..., nn.Module]:
    try:
        loaded = importlib.import_module(module)
    except ImportError as err:
        raise ConfigError(f"cannot import module {module!r} ({first_line(err)}); install it or pass file.py:factory")
    return find_factory(loaded, factory, module)


def find_factory(module: ModuleType, name: str, where: str) -> Callable[..., nn.Module]:
    fn = getattr(module, name, None)
    if callable(fn):
        return fn
    own = [
        n
        for n, obj in vars(module).items()
        if callable(obj) and not n.startswith("_") and getattr(obj, "__module__", None) == module.__name__
    ]
    raise ConfigError(
        f"{where} has no callable {name!r}; its callables: {', '.join(sorted(own)) or 'none'} (pass FILE.py:NAME)"
    )


def call_factory(factory: Callable[..., nn.Module], args: dict[str, Any], name: str) -> nn.Module:
    """``factory(**args)``, which must return an ``nn.Module``."""
    try:
        model = factory(**args)
    except TypeError as err:
        try:
            params = ", ".join(inspect.signature(factory).parameters) or "none"
        except (TypeError, ValueError):
            params = "unknown"
        raise ConfigError(f"{name}(**model_args) failed ({first_line(err)}); its parameters: {params}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{name}() returned a {type(model).__name__}, not a torch nn.Module")
    return model


def package_of(module: str) -> tuple[str, str | None]:
    """The distribution that installs ``module`` and its version (the top-level name and None if unknown)."""
    top = module.split(".")[0]
    dists = metadata.packages_distributions().get(top) or [top]
    try:
        return dists[0], metadata.version(dists[0])
    except metadata.PackageNotFoundError:
        return top, None


def _warn_on_version_change(kwargs: dict[str, Any]) -> None:
    package, version = package_of(kwargs["module"])
    if kwargs.get("version") and version != kwargs["version"]:
        warnings.warn(
            f"{kwargs['module']} was imported from {package} {kwargs['version']}; {version or 'no version'} is "
            "installed now, so the model may differ"
        )


# -- graphs: TorchScript and torch.export files ---------------------------------------------------------------
def load_graph_file(path: Path, kind: str) -> nn.Module:
    """The module held by a TorchScript file (``kind`` torchscript) or a torch.export program (export)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice, on every load
            if kind == "torchscript":
                return torch.jit.load(str(path), map_location="cpu")
            model = torch.export.unflatten(torch.export.load(str(path)))
    except Exception as err:  # both loaders raise many types for a file that is not theirs
        what = "a TorchScript file (torch.jit.save)" if kind == "torchscript" else "a torch.export program (.pt2)"
        raise ConfigError(
            f"{path} could not be read as {what}: {first_line(err)}; a pickled whole model (torch.save(model)) is "
            "never unpickled: save its state_dict and import file.py:factory --weights FILE"
        ) from None
    # The graphs' node metadata holds fake tensors that copy.deepcopy cannot copy (explain copies models);
    # running the graph does not read it.
    for module in model.modules():
        for node in getattr(getattr(module, "graph", None), "nodes", ()):
            node.meta.clear()
    return model


class OnnxModule(nn.Module):
    """An ONNX graph as a module: a normalised float batch (N, 3, H, W) in, the graph's scores out, through
    onnxruntime. ``input`` ``uint8`` is for graphs that normalise inside (cifarlens's own export): their spec's
    normalisation is the identity on a 0-255 scale and the batch is rounded to uint8 here. onnxruntime gives
    no gradients and has no modules to hook: ``differentiable`` and ``takes_hooks`` say so to the tools."""

    differentiable = False
    takes_hooks = False

    def __init__(self, path: Path, input: str = "float32"):
        super().__init__()
        import onnxruntime as ort

        try:
            self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own types for a bad file
            raise ConfigError(f"{path} could not be read as an ONNX graph: {first_line(err)}") from None
        self.input_name = self.session.get_inputs()[0].name
        self.input = input

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().float().cpu()
        if self.input == "uint8":
            array = x.round().clamp(0, 255).to(torch.uint8).numpy()
        else:
            array = x.contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0]).float()

    def __deepcopy__(self, memo) -> "OnnxModule":
        return self  # no parameters to change, and an onnxruntime session cannot be copied


# -- the copies in the run ------------------------------------------------------------------------------------
def check_hashes(home: Path, files: dict[str, str]) -> None:
    """Each copied file under ``home`` still has the SHA-256 recorded at import."""
    for relative, expected in files.items():
        path = home / relative
        if not path.is_file():
            raise RunDirError(f"{path} is missing from the imported run; import the model again")
        if sha256_file(path) != expected:
            raise RunDirError(f"{path} changed since it was imported (SHA-256 differs); import the model again")
