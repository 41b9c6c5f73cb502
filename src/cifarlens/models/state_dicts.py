"""Weights saved by other training scripts, fitted to the model they belong to.

A state dict arrives in many shapes: bare, or nested in a checkpoint dict under the script's own key
(Lightning's ``state_dict``, ``model``, ``net`` ...) beside the epoch and the optimizer; its names prefixed by
``module.`` (DataParallel, DDP), ``_orig_mod.`` (torch.compile) or the attribute a wrapper keeps the model in
(Lightning's ``model.``). ``fit_state_dict`` finds the tensors that match the model's own names and shapes.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from cifarlens.errors import ConfigError, first_line

WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.", "net.", "network.")
SHOWN = 3  # offending names a mismatch names


def read_weights_file(path: str | Path) -> object:
    """What a .safetensors file or a torch.save file (read with ``weights_only=True``) holds."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"weights file {path} not found")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as err:
            raise ConfigError(f"{path} is not a readable safetensors file ({first_line(err)})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # weights_only refuses pickled objects with an UnpicklingError, or others
        raise ConfigError(
            f"{path} holds more than tensors (pickled objects need weights_only=False, which cifarlens never uses: "
            f"{first_line(err)}); save model.state_dict() with torch.save, or as .safetensors"
        ) from None


def tensor_dicts(obj: object, where: str = "") -> dict[str, dict[str, torch.Tensor]]:
    """Every dict of tensors inside ``obj`` (nested dicts searched), by where it sits (``""``: ``obj`` itself)."""
    if not isinstance(obj, dict):
        return {}
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    found = {where: tensors} if tensors else {}
    for key, value in obj.items():
        if isinstance(value, dict):
            found |= tensor_dicts(value, f"{where}.{key}" if where else str(key))
    return found


def strip_prefixes(state: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """``state`` with wrapper prefixes removed from its names, as long as that makes more of them ``expected``."""
    while True:
        matched = len(expected & set(state))
        best = state
        for prefix in WRAPPER_PREFIXES:
            if any(k.startswith(prefix) for k in state):
                stripped = {k.removeprefix(prefix): v for k, v in state.items()}
                if len(expected & set(stripped)) > matched:
                    best, matched = stripped, len(expected & set(stripped))
        if best is state:
            return state
        state = best


def fit_state_dict(obj: object, model: nn.Module, path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in ``obj`` (what ``read_weights_file`` returned) that fits ``model``: the nested dict whose
    names, prefixes stripped, match most of the model's; a mismatch is one line naming the first offenders."""
    expected = model.state_dict()
    candidates = {where: strip_prefixes(d, set(expected)) for where, d in tensor_dicts(obj).items()}
    if not candidates:
        raise ConfigError(f"{path} holds no tensors; save model.state_dict()")
    where, state = max(candidates.items(), key=lambda item: len(set(expected) & set(item[1])))
    inside = f" (under {where!r})" if where else ""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing: {', '.join(missing[:SHOWN])}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: {', '.join(unexpected[:SHOWN])}")
    if shapes:
        detail = ", ".join(f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in shapes[:SHOWN])
        problems.append(f"{len(shapes)} of another shape: {detail}")
    if problems:
        raise ConfigError(
            f"the weights in {path}{inside} do not fit the model ({'; '.join(problems)}); "
            "check --model-args and that the file belongs to this model"
        )
    return {k: state[k] for k in expected}
