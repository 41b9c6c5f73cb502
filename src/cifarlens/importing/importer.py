"""``import_model``: a model trained elsewhere written as an ordinary run directory that every command reads.

The run is assembled in a hidden folder beside ``--out`` and renamed into place only once it is complete, was
rebuilt from its own files to the same outputs, and (unless ``--no-check``) scored at least ``MIN_ACCURACY``
on the test split; a failed import leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from cifarlens.config import to_dict
from cifarlens.data import CLASSES, RunData, model_input, prepare_data
from cifarlens.device import resolve_device
from cifarlens.errors import ConfigError
from cifarlens.evaluation import evaluate_run
from cifarlens.importing.check import MIN_ACCURACY, Diagnosis, diagnose
from cifarlens.importing.config import ImportConfig
from cifarlens.importing.finding import check_runs, detect_output, find_capabilities
from cifarlens.importing.sources import Opened, open_source
from cifarlens.io import sha256_file
from cifarlens.models import Capabilities
from cifarlens.models.imported import adapt, is_imported
from cifarlens.models.trust import TRUST_ENV
from cifarlens.run import ModelSpec, RunDir

PROBE_N = 64  # images the output kind is told from


class ImportCheckFailed(ConfigError):
    """The imported model scored below ``MIN_ACCURACY``: the input convention (or class order) is likely wrong."""

    def __init__(self, message: str, diagnosis: Diagnosis):
        super().__init__(message)
        self.diagnosis = diagnosis


@dataclass
class ImportResult:
    run: Path
    what: str  # what was opened
    spec: ModelSpec
    capabilities: Capabilities
    output: str  # logits or probabilities
    accuracy: float | None  # on the test split; None with --no-check
    n: int | None  # test images scored


def import_model(cfg: ImportConfig) -> ImportResult:
    """Write the model ``cfg.source`` names as the run ``cfg.out``; see the module docstring."""
    out = Path(cfg.out)
    if out.exists():
        raise ConfigError(f"{out} already exists; pass a new --out folder (an import never writes over a run)")
    device = str(resolve_device(cfg.device))
    with _trusting(cfg.trust_code):
        opened = open_source(cfg)
        num_outputs = check_runs(opened.model, cfg.image_size)
        classes, order = _classes(cfg, num_outputs)
        data = prepare_data(cfg.data_dir or None) if cfg.check else None
        mean, std = cfg.normalization()
        probe = _probe_inputs(data, mean, std, cfg.image_size)
        output = detect_output(opened.model, probe) if cfg.output == "auto" else cfg.output
        model, spec = _adapted(opened, cfg, output, classes, order, mean, std)
        caps = spec.capabilities(model)
        staging = out.parent / f".{out.name}.importing"
        shutil.rmtree(staging, ignore_errors=True)  # what an import killed midway left
        try:
            _write_run(RunDir(staging), opened, model, spec, cfg, data)
            _check_rebuilds(RunDir(staging), model, probe)
            accuracy, n = _check_accuracy(staging, opened.model, cfg, data, output, device)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    os.rename(staging, out)
    return ImportResult(out, opened.what, spec, caps, output, accuracy, n)


@contextlib.contextmanager
def _trusting(trust_code: bool) -> Iterator[None]:
    """With ``--trust-code``, the readers inside the import (the rebuild check, evaluate) may run the code too."""
    before = os.environ.get(TRUST_ENV)
    if trust_code:
        os.environ[TRUST_ENV] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(TRUST_ENV, None)
        else:
            os.environ[TRUST_ENV] = before


def _classes(cfg: ImportConfig, num_outputs: int) -> tuple[tuple[str, ...], list[int] | None]:
    """The run's class names, and where the model's outputs are CIFAR-10's classes in another order, the output
    of each class (``order[c]``), so that the run's model answers in the dataset's order."""
    names = cfg.class_names()
    if names is None and num_outputs == len(CLASSES):
        return tuple(CLASSES), None
    if names is None or len(names) != num_outputs:
        given = f"--classes names {len(names)}" if names else "CIFAR-10 has 10"
        raise ConfigError(f"the model has {num_outputs} outputs but {given}; pass --classes with {num_outputs} names")
    if sorted(names) == sorted(CLASSES) and list(names) != list(CLASSES):
        return tuple(CLASSES), [names.index(c) for c in CLASSES]
    return names, None


def _probe_inputs(data: RunData | None, mean, std, image_size: int) -> torch.Tensor:
    """Normalised test images (noise when no data is loaded): what the output kind and the rebuild are checked on."""
    if data is not None:
        images = data.test.images[:PROBE_N]
    else:
        images = torch.randint(0, 256, (PROBE_N, 3, 32, 32), generator=torch.Generator().manual_seed(0))
        images = images.to(torch.uint8)
    return model_input(images, mean, std, image_size)


def _adapted(opened: Opened, cfg: ImportConfig, output, classes, order, mean, std) -> tuple[nn.Module, ModelSpec]:
    """The model as every tool will run it (``Adapted`` for BGR, probabilities or a class order) and its spec."""
    if not is_imported(opened.name):
        if cfg.bgr or output == "probabilities" or order:
            raise ConfigError(
                f"{opened.name} outputs logits for RGB input in CIFAR-10's class order; --bgr, --output "
                "probabilities and a reordering --classes are for models imported from their own code "
                "(file.py:factory, TorchScript, .pt2)"
            )
        spec = ModelSpec(opened.name, opened.kwargs, len(classes), classes, mean, std, cfg.image_size)
        if cfg.classifier or cfg.cam_layer:
            found = find_capabilities(
                opened.model,
                mean=mean,
                std=std,
                image_size=cfg.image_size,
                classifier=cfg.classifier,
                cam_layer=cfg.cam_layer,
            )
            spec.declared = found.to_dict()
        return opened.model, spec
    model = adapt(opened.model, cfg.bgr, output, order)
    prefix = "body." if model is not opened.model else ""
    caps = find_capabilities(
        model,
        mean=mean,
        std=std,
        image_size=cfg.image_size,
        module_types=opened.module_types,
        classifier=prefix + cfg.classifier if cfg.classifier else "",
        cam_layer=prefix + cfg.cam_layer if cfg.cam_layer else "",
    )
    kwargs = (
        opened.kwargs
        | ({"bgr": True} if cfg.bgr else {})
        | ({"output": output} if output != "logits" else {})
        | ({"order": order} if order else {})
    )
    spec = ModelSpec(opened.name, kwargs, len(classes), classes, mean, std, cfg.image_size, caps.to_dict())
    return model, spec


def _write_run(run: RunDir, opened: Opened, model: nn.Module, spec: ModelSpec, cfg: ImportConfig, data) -> None:
    for relative, source in opened.copies.items():
        target = run.path / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    run.save_model(model, spec)
    run.write_config(
        {
            "model": spec.name,
            "model_args": spec.kwargs,
            "data_dir": str(Path(cfg.data_dir).resolve()) if cfg.data_dir else "",
            "download": False,
            "subset": 0,
            "val_size": 0,
            "seed": 0,
            "imported": {
                "source": cfg.source,
                "weights": cfg.weights or None,
                "weights_sha256": sha256_file(Path(cfg.weights)) if cfg.weights else None,
                "options": to_dict(cfg),
            },
        }
    )
    run.write_provenance({"device": cfg.device, "imported": True})


def _check_rebuilds(run: RunDir, model: nn.Module, probe: torch.Tensor) -> None:
    """The run's own files rebuild the same model: equal outputs on the probe images."""
    rebuilt, _ = run.load_model()
    with torch.no_grad():
        same = torch.allclose(rebuilt(probe).float(), model(probe).float(), atol=1e-5, rtol=1e-4)
    if not same:
        raise ConfigError(
            "the model rebuilt from the run's files gives other outputs than the one imported (a forward that is "
            "random in eval mode, or state kept outside its parameters and buffers); cifarlens cannot rebuild it"
        )


def _check_accuracy(staging: Path, model, cfg, data, output, device) -> tuple[float | None, int | None]:
    if data is None:
        return None, None
    result = evaluate_run(staging, data=data, device=device)
    if result["accuracy"] >= MIN_ACCURACY:
        return result["accuracy"], result["n"]
    diagnosis = diagnose(model, data.test, data.classes, output=output, image_size=cfg.image_size, device=device)
    raise ImportCheckFailed(
        f"the imported model scores {result['accuracy']:.1%} on the {result['n']} test images, so it is probably fed "
        f"another way than it was trained; {diagnosis.advice()} (or --no-check for an untrained model)",
        diagnosis,
    )
