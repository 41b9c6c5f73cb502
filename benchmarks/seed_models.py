"""Seed models with their reported recipes on the full CIFAR-10: speed and accuracy.

Two parts, both through the normal trainer (``cifarlens.training.train``):

* timing: every model trains one epoch on a stratified subset in fp32 and in bf16
  autocast, side by side in the same run; the table gives images/s, the projected
  seconds per full 50,000-image epoch and the bf16/fp32 speed ratio.
* accuracy: the models named in ``--full`` train their whole recipe on all 50,000
  images (less ``--val-size`` held out) for each seed in ``--seeds``; the table gives mean +- std
  held-out and test accuracy, the time it took, and the figure the seed report gave.

    python benchmarks/seed_models.py --timing-subset 2000 --full tutorial,seed_bn8 --seeds 0,1
    python benchmarks/seed_models.py --timing-subset 0 --full tutorial,vgg_small,conv_blocks,seed_bn8 \
        --seeds 0 --val-size 5000

Results go to ``--out`` (JSON) and are printed as Markdown for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings
from datetime import date
from pathlib import Path

import torch

from cifarlens.config import build_config
from cifarlens.data import prepare_data
from cifarlens.device import cpu_name
from cifarlens.errors import CifarlensError, first_line
from cifarlens.models.registry import list_models
from cifarlens.run import RunDir
from cifarlens.training import TrainConfig, recipe_options
from cifarlens.training.recipes import recipe_for_model
from cifarlens.training.trainer import train

# What each seed report says its recipe reached (on the official test set), for the table beside ours.
REPORTED = {"tutorial": "~54%", "seed_bn8": "84%", "vgg_small": "~81%", "conv_blocks": "84%"}
SEED_MODELS = ["tutorial", "seed_bn8", "vgg_small", "conv_blocks", "resnet18", "mobilenet_v2", "vgg16"]


def run(cfg: TrainConfig, data) -> list[dict]:
    out = train(cfg, data=data)
    return RunDir(out).read_metrics()


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def timing(models, subset, data_dir, workdir) -> list[dict]:
    data = prepare_data(data_dir, download=False, subset=subset, seed=0)
    rows = []
    for model in models:
        row = {"model": model, "recipe": recipe_for_model(model)}
        for precision in ("fp32", "bf16"):
            cfg = build_config(
                TrainConfig,
                recipe_options(row["recipe"]),
                {
                    "model": model,
                    "epochs": 1,
                    "precision": precision,
                    "out": str(workdir / f"t-{model}-{precision}"),
                    "evaluate": False,
                    "eval_test_every_epoch": False,
                    "data_dir": data_dir,
                    "download": False,
                },
            )
            ips = float(run(cfg, data)[-1]["images_per_s"])
            row[f"{precision}_images_per_s"] = ips
            row[f"{precision}_epoch_s"] = 50_000 / ips
            row["batch_size"] = cfg.batch_size
        row["bf16_speedup"] = row["bf16_images_per_s"] / row["fp32_images_per_s"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def accuracy(models, seeds, data_dir, workdir, epochs, val_size=0) -> list[dict]:
    results = []
    for model in models:
        accs, val_accs, train_secs, epoch_secs, cfg = [], [], [], [], None
        for seed in seeds:
            data = prepare_data(data_dir, download=False, seed=seed, val_size=val_size)
            overrides = {
                "model": model,
                "seed": seed,
                "out": str(workdir / f"a-{model}-{seed}"),
                "evaluate": False,
                "data_dir": data_dir,
                "download": False,
                "val_size": val_size,
            }
            if epochs:
                overrides["epochs"] = epochs
            cfg = build_config(TrainConfig, recipe_options(recipe_for_model(model)), overrides)
            rows = run(cfg, data)
            accs.append(float(rows[-1]["test_acc"]))
            if val_size:
                val_accs.append(float(rows[-1]["val_acc"]))
            epoch_secs += [float(r["seconds"]) for r in rows]
            train_secs.append(sum(float(r["seconds"]) for r in rows))
            print(
                json.dumps(
                    {
                        "model": model,
                        "seed": seed,
                        "test_acc": accs[-1],
                        "val_acc": val_accs[-1:],
                        "train_s": train_secs[-1],
                    }
                ),
                flush=True,
            )
        test_mean, test_std = mean_std(accs)
        results.append(
            {
                "model": model,
                "recipe": recipe_for_model(model),
                "optimizer": cfg.optimizer,
                "lr": cfg.lr,
                "batch_size": cfg.batch_size,
                "epochs": cfg.epochs,
                "precision": cfg.precision,
                "seeds": seeds,
                "val_size": val_size,
                "test_acc_mean": test_mean,
                "test_acc_std": test_std,
                "test_accs": accs,
                "val_accs": val_accs,
                "train_s": train_secs,
                "epoch_s_mean": statistics.mean(epoch_secs),
                "reported": REPORTED.get(model, ""),
            }
        )
    return results


def markdown(result: dict) -> str:
    lines = [
        f"Machine: {result['machine']}; torch {result['torch']}, {result['threads']} threads; {result['date']}",
        "",
    ]
    if result["timing"]:
        lines += [
            f"Timing: one epoch on a stratified {result['timing_subset']}-image subset, projected to 50,000 images.",
            "",
            "| model | recipe | batch | fp32 img/s | bf16 img/s | bf16/fp32 | s/epoch fp32 | s/epoch bf16 |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in result["timing"]:
            lines.append(
                f"| {r['model']} | {r['recipe']} | {r['batch_size']} | {r['fp32_images_per_s']:.0f} | "
                f"{r['bf16_images_per_s']:.0f} | {r['bf16_speedup']:.2f}x "
                f"| {r['fp32_epoch_s']:.0f} | {r['bf16_epoch_s']:.0f} |"
            )
    if result["accuracy"]:
        lines += [
            "",
            "Accuracy: full recipe on all 50,000 training images, scored on the 10,000 test images of the data dir.",
            "",
            "| model | optimizer | lr | batch | epochs | test acc (mean ± std) | seeds | s/epoch |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in result["accuracy"]:
            lines.append(
                f"| {r['model']} | {r['optimizer']} | {r['lr']:g} | {r['batch_size']} | {r['epochs']} | "
                f"{100 * r['test_acc_mean']:.2f} ± {100 * r['test_acc_std']:.2f} "
                f"| {len(r['seeds'])} | {r['epoch_s_mean']:.0f} |"
            )
        held_out = [r for r in result["accuracy"] if r.get("val_accs")]
        if held_out:
            lines += [
                "",
                f"Against the seed reports ({held_out[0]['val_size']:,} training images held out, mean over seeds):",
                "",
                "| model | recipe | held-out % | JPEG test % | the report says | training time |",
                "| --- | --- | ---: | ---: | ---: | ---: |",
            ]
            for r in held_out:
                minutes = statistics.mean(r["train_s"]) / 60
                lines.append(
                    f"| {r['model']} | {r['recipe']} | {100 * statistics.mean(r['val_accs']):.2f} | "
                    f"{100 * r['test_acc_mean']:.2f} | {r['reported'] or '-'} | {minutes:.0f} min |"
                )
    return "\n".join(lines)


def names(text: str, option: str) -> list[str]:
    """Registered model names from a comma-separated option; an unknown one ends the script with one line."""
    chosen = [m for m in text.split(",") if m]
    unknown = [m for m in chosen if m not in list_models()]
    if unknown:
        raise SystemExit(f"error: unknown model {unknown[0]!r} in {option}; choose from {', '.join(list_models())}")
    return chosen


def seed_list(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds are integers separated by commas, got {text!r}") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="CIFAR-10 folder (default: $CIFARLENS_DATA_DIR)")
    parser.add_argument("--models", default=",".join(SEED_MODELS), help="models to time")
    parser.add_argument("--timing-subset", type=int, default=2000, help="images in the timed epoch (0: skip timing)")
    parser.add_argument("--full", default="", help="models to train with their full recipe on all data")
    parser.add_argument("--seeds", type=seed_list, default="0,1", help="seeds for the full runs")
    parser.add_argument("--epochs", type=int, default=0, help="override the recipe's epochs in full runs (0: keep)")
    parser.add_argument("--val-size", type=int, default=0, help="training images held out and scored in full runs")
    parser.add_argument("--out", default="benchmarks/results/seed_models.json")
    parser.add_argument("--workdir", default=None, help="keep the run directories here (default: a temporary folder)")
    args = parser.parse_args()
    warnings.simplefilter("ignore", UserWarning)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir or tmp)
        models, full = names(args.models, "--models"), names(args.full, "--full")
        t0 = time.time()
        result = {
            "date": str(date.today()),
            "machine": f"{cpu_name()}, {torch.get_num_threads()} threads",
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "command": "python benchmarks/seed_models.py "
            + " ".join(
                f"--{k.replace('_', '-')} {','.join(map(str, v)) if isinstance(v, list) else v}"
                for k, v in vars(args).items()
                if v not in (None, "")
            ),
            "timing_subset": args.timing_subset,
        }
        try:
            result["timing"] = timing(models, args.timing_subset, args.data_dir, workdir) if args.timing_subset else []
            result["accuracy"] = accuracy(full, args.seeds, args.data_dir, workdir, args.epochs, args.val_size)
        except CifarlensError as err:  # missing data, a bad option value: one line, as the CLI does
            raise SystemExit(f"error: {first_line(err)}") from None
        result["wall_s"] = time.time() - t0
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(markdown(result))


if __name__ == "__main__":
    main()
