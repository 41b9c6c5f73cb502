"""The global RNG states a checkpoint carries, so a resumed run draws what an uninterrupted one would."""

from __future__ import annotations

from typing import Any

import torch


def rng_state() -> dict[str, Any]:
    """The global torch RNG states (dropout and any other global draws)."""
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
