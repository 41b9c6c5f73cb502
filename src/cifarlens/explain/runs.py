"""What the library functions that explain a run share: its model on a device, file names, CSV files."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import torch
from torch import nn

from cifarlens.device import resolve_device
from cifarlens.io import atomic_write_text
from cifarlens.run import ModelSpec, RunDir


def load_run_model(run: str | Path, device: str = "cpu") -> tuple[nn.Module, ModelSpec, torch.device]:
    """The run's trained model (eval mode) on ``device`` (auto, cpu, cuda or mps), its spec and the device."""
    dev = resolve_device(device)
    model, spec = RunDir(run).load_model(dev)
    return model, spec, dev


def file_stem(layer: str) -> str:
    """A layer name as part of a file name (no folder separators)."""
    return layer.replace("/", "_")


def write_csv(path: Path, rows: list[dict]) -> None:
    """``rows`` (dicts with the same keys) as a CSV file with a header, written atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def last_stage(model: nn.Module, spec: ModelSpec) -> str:
    """The deepest probe stage (the input of the last linear layer): the default layer to project or maximise."""
    return spec.capabilities(model).probe_stages[-1]
