"""What a recovery checkpoint costs: seconds per save for real training states, and the share of training
time that makes at a given ``--checkpoint-every``.

Sets each recipe up through the trainer (model, optimizer with its state after real steps, run folder),
then times ``RunDir.save_checkpoint`` of a recovery checkpoint, fsync included, as the trainer writes it.

    python benchmarks/checkpoint_cost.py --recipes fast,resnet18 --every 60
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console

from cifarlens.config import build_config
from cifarlens.data import prepare_data
from cifarlens.device import cpu_name
from cifarlens.training import TrainConfig, recipe_options
from cifarlens.training.trainer import setup, train_one_epoch


def save_seconds(recipe: str, data_dir: str | None, repeats: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        options = recipe_options(recipe)
        batch = min(int(options["batch_size"]), 500)  # the checkpoint's size does not depend on the batch
        cfg = build_config(
            TrainConfig,
            options,
            {
                "out": str(Path(tmp) / "run"),
                "data_dir": data_dir or "",
                "early_epochs": 0,
                "early_size": 0,
                "batch_size": batch,
            },
        )
        data = prepare_data(cfg.data_dir or None, subset=2 * batch, seed=0)
        state = setup(cfg, data=data, console=Console(quiet=True))
        train_one_epoch(state, 0)  # the optimizer holds its momentum buffers, as mid-run
        times = []
        for step in range(1, repeats + 1):
            t0 = time.perf_counter()
            state.run.save_checkpoint(
                1,
                state.learner.model,
                state.learner.spec,
                state.training_state() | {"partial": {"step": step}},
                step=step,
            )
            times.append(time.perf_counter() - t0)
        size = sum(p.stat().st_size for p in state.run.checkpoint_dir.glob(f"epoch-0001.step-{repeats:06d}.*"))
    return {
        "recipe": recipe,
        "model": cfg.model,
        "megabytes": size / 2**20,
        "seconds_best": min(times),
        "seconds_median": sorted(times)[len(times) // 2],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default="fast,resnet18")
    parser.add_argument("--every", type=float, default=60.0, help="--checkpoint-every to state the share at")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the numbers")
    args = parser.parse_args()
    print(f"{cpu_name()}, {torch.get_num_threads()} threads")
    print(
        "| recipe | model | checkpoint MB | s per save (median) | share of training at --checkpoint-every "
        f"{args.every:g} |\n| --- | --- | ---: | ---: | ---: |"
    )
    rows = []
    for recipe in args.recipes.split(","):
        row = save_seconds(recipe, args.data_dir, args.repeats)
        row["share"] = row["seconds_median"] / (args.every + row["seconds_median"])
        rows.append(row)
        print(
            f"| {recipe} | {row['model']} | {row['megabytes']:.1f} | {row['seconds_median']:.3f} | {row['share']:.2%} |"
        )
    if args.out:
        args.out.write_text(json.dumps({"cpu": cpu_name(), "every": args.every, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
