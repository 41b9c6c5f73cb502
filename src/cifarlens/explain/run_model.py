"""The run's model as every explain function loads it, and the layer they explain by default."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from cifarlens.device import resolve_device
from cifarlens.run import ModelSpec, RunDir


def load_run_model(run: str | Path, device: str = "cpu") -> tuple[nn.Module, ModelSpec, torch.device]:
    """The run's trained model (eval mode) on ``device`` (auto, cpu, cuda or mps), its spec and the device."""
    dev = resolve_device(device)
    model, spec = RunDir(run).load_model(dev)
    return model, spec, dev


def last_stage(model: nn.Module, spec: ModelSpec) -> str:
    """The deepest probe stage (the input of the last linear layer): the default layer to project or maximise."""
    return spec.capabilities(model).probe_stages[-1]
