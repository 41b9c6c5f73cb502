"""The run folder of a training run: made, configured and summarised (through ``RunDir``).

Shared by the trainer and the linear probe (``features``), which both write normal run directories.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from pathlib import Path

from cifarlens.config import build_config, to_dict
from cifarlens.data import RunData
from cifarlens.errors import RunDirError
from cifarlens.run import RunDir
from cifarlens.training.config import TrainConfig


def default_out(model: str) -> str:
    """``runs/MODEL-YYYYmmdd-HHMMSS``: where a run goes without ``--out``."""
    return str(Path("runs") / f"{model}-{datetime.now():%Y%m%d-%H%M%S}")


def new_run_dir(cfg: TrainConfig) -> RunDir:
    """The run folder for a new run, not made yet (``start_run_dir`` makes it); refuses one that holds a run."""
    run = RunDir(cfg.out or default_out(cfg.model))
    if run.config_file.exists():
        raise RunDirError(
            f"run directory {run} already holds a run; continue it with --resume {run} or pick another --out"
        )
    if run.path.exists() and not run.path.is_dir():
        raise RunDirError(f"--out {run} is a file; pick a folder path")
    return run


def start_run_dir(run: RunDir, cfg: TrainConfig, data: RunData, machine: dict) -> None:
    """Make the run folder and write its config.yaml and provenance.json. Called only once the options and
    data are known to work, so that a bad option or missing data leaves no empty run folder."""
    run.write_config(run_config(cfg, data))
    run.write_provenance(machine)


def run_config(cfg: TrainConfig, data: RunData) -> dict:
    """What config.yaml stores: ``cfg`` with ``data_dir`` set to the folder the data was read from,
    absolute, so evaluate/explain/--resume find the same data from any folder or shell."""
    return to_dict(dataclasses.replace(cfg, data_dir=str(data.root.resolve())))


def load_run_config(run: str | Path) -> TrainConfig:
    """The resolved config saved in a run directory."""
    run = RunDir(run).require_config("check the path")
    return build_config(TrainConfig, run.config, sources=(str(run.config_file),))


def write_train_summary(
    run: RunDir, rows: list[dict], cfg: TrainConfig, device, precision: str, clocks: dict[str, float] | None = None
) -> None:
    """summary.json's ``train`` key: the last epoch's numbers, device and precision, and ``clocks`` (the
    trainer's ``train_s``: seconds of training steps alone; ``compile_s``: compiling ahead, apart from them)."""
    last = rows[-1]
    summary = {
        "model": cfg.model,
        "epochs": int(last["epoch"]),
        "seconds": float(last["elapsed"]),
        "final_train_loss": float(last["train_loss"]),
        "final_train_acc": float(last["train_acc"]),
        "device": str(device),
        "precision": precision,
    } | (clocks or {})
    for key in ("val_acc", "test_acc"):
        if last.get(key) not in (None, ""):
            summary[f"final_{key}"] = float(last[key])
    run.merge_summary("train", summary)
