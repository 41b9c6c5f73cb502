"""The seed report's conv-block CNN in PyTorch (``conv_blocks``) and in Keras, trained by cifarlens with one recipe.

Issue 25's benchmark: the same architecture written twice, trained side by side through the normal trainer
(``cifarlens train --recipe conv_blocks``: Adam 1e-3, batch 64, constant lr, crop+flip, the same seed, data
order, augmentation, loss and torch optimizer), so what differs is only how each framework writes the model:

* PyTorch: ``cifarlens.models.small.conv_blocks``, PyTorch's layer defaults: conv and linear weights
  kaiming-uniform(a=sqrt 5), i.e. U(+-1/sqrt(fan_in)), linear biases U(+-1/sqrt(fan_in)); BatchNorm2d
  momentum 0.1 (a running average that keeps 0.9 of the old value) and eps 1e-5.
* Keras: the model below, written as a Keras user of the seed report writes it, with **Keras's own layer
  defaults**: Conv2D and Dense kernels glorot_uniform, biases zeros; BatchNormalization momentum 0.99 (keeps
  0.99 of the old moving statistics: ten times slower to follow the weights than PyTorch's) and epsilon 1e-3.
  These defaults differ from PyTorch's, and that is the point of the comparison: the seed report trained the
  "same" CNN in both frameworks and its numbers differ partly because of them. Trained as ``keras:FILE.keras``
  (Keras 3, torch backend, rebuilt channels_first: ``cifarlens/models/keras_models.py``).

Two choices keep the two models the same function with the same parameters:

* the convolutions have ``use_bias=False``, as PyTorch's conv_blocks has: a bias right before BatchNormalization
  is cancelled by its mean subtraction (zero gradient), and Keras's default ``use_bias=True`` would add 448
  inert parameters. The script checks that the trainable parameter counts are equal and prints both;
* the input: cifarlens feeds the PyTorch model CIFAR-10 mean/std-normalised pixels, and a ``.keras`` file
  0-1 pixels (``preprocess: scale``, what the seed report fed its Keras models). With ``--keras-input normalize``
  (default) the Keras model starts with ``keras.layers.Normalization`` holding the same CIFAR-10 mean and
  variance (no trainable parameters), so both networks see the same numbers; ``--keras-input scale`` leaves it
  out and gives the seed report's Keras input (0-1), a second difference on top of the layer defaults.

Each (seed, framework) is a fresh ``cifarlens train`` process, one after the other, PyTorch then Keras for each
seed. From each run directory: held-out accuracy (``--val-size`` training images, last epoch, metrics.csv),
JPEG test accuracy (summary.json ``test``, the final evaluation), training images/s (median over epochs of
metrics.csv ``images_per_s``: augmentation + forward + backward + step, without scoring) and seconds per epoch
(training only, and wall with the per-epoch validation scoring). Inference images/s: ``cifarlens bench RUN
--backends torch --batch-sizes 256`` on the first seed's runs (fp32 eager). Results go to ``--out`` as JSON and
are printed as a Markdown table.

    CIFARLENS_DATA_DIR=../shared/data/cifar10 python benchmarks/keras_vs_torch.py --epochs 25 --seeds 0,1,2
    python benchmarks/keras_vs_torch.py --subset 1000 --epochs 1 --seeds 0 --val-size 500   # quick check
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from cifarlens.data import CIFAR10_MEAN, CIFAR10_STD  # what cifarlens normalises PyTorch models' inputs with
from cifarlens.device import cpu_fields
from cifarlens.run import RunDir

ROOT = Path(__file__).resolve().parents[1]
CIFARLENS = [sys.executable, "-m", "cifarlens"]


def cpu_name() -> dict:
    """model name, family and model of the first CPU in /proc/cpuinfo, and the flags that matter for precision."""
    info: dict[str, object] = {"processor": platform.processor() or platform.machine()}
    fields = cpu_fields()
    if not fields:
        return info
    flags = set(fields.get("flags", "").split())
    info.update(
        model_name=fields.get("model name"),
        family=fields.get("cpu family"),
        model=fields.get("model"),
        logical_cpus=os.cpu_count(),
        avx512f="avx512f" in flags,
        avx512_bf16="avx512_bf16" in flags,
        amx_bf16="amx_bf16" in flags,
    )
    info["name"] = (
        f"{info['model_name']} (family {info['family']} model {info['model']}, {os.cpu_count()} logical CPUs)"
    )
    return info


# ---- the Keras model ------------------------------------------------------------------------------------------------


def write_keras_model(path: Path, keras_input: str, blocks: int = 3, width: int = 32) -> object:
    """The conv-block CNN in Keras, saved to ``path``; returns the Keras model.

    Written with keras.layers and Keras's defaults (glorot_uniform kernels, zero biases, BatchNormalization
    momentum 0.99 / epsilon 1e-3); only the conv biases are off, as in PyTorch's conv_blocks (before a BN they
    are inert)."""
    from cifarlens.models.keras_models import import_keras

    keras = import_keras()
    layers = keras.layers
    keras.utils.set_random_seed(0)  # the file's own weights; cifarlens draws fresh ones per seed when it trains
    inputs = keras.Input((32, 32, 3))
    x = inputs
    if keras_input == "normalize":
        x = layers.Normalization(mean=list(CIFAR10_MEAN), variance=[s * s for s in CIFAR10_STD])(x)
    for i in range(blocks):
        filters = width * 2**i
        for _ in range(2):
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
            x = layers.BatchNormalization()(x)
            x = layers.ReLU()(x)
        x = layers.MaxPooling2D()(x)
        x = layers.Dropout(min(0.2 + 0.1 * i, 0.5))(x)  # 0.2, 0.3, 0.4
    x = layers.Flatten()(x)
    x = layers.Dense(128, activation="relu")(x)
    x = layers.Dropout(0.5)(x)
    outputs = layers.Dense(10, activation="softmax")(x)
    model = keras.Model(inputs, outputs, name="conv_blocks_keras")
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return model


def parameter_counts(keras_file: Path) -> dict:
    """Trainable parameters of the PyTorch conv_blocks, of the Keras model, and of the Keras model as cifarlens
    trains it (KerasNet); whether cifarlens rebuilt it channels_first (else it transposes at every conv)."""
    from cifarlens.models import create_model

    torch_model = create_model("conv_blocks")
    keras_net = create_model(f"keras:{keras_file}")
    from cifarlens.models.keras_models import import_keras

    keras = import_keras()
    keras_model = keras.saving.load_model(keras_file, compile=False)
    return {
        "torch": sum(p.numel() for p in torch_model.parameters() if p.requires_grad),
        "keras": int(sum(int(keras.ops.size(w)) for w in keras_model.trainable_weights)),
        "keras_non_trainable": int(sum(int(keras.ops.size(w)) for w in keras_model.non_trainable_weights)),
        "keras_in_cifarlens": sum(p.numel() for p in keras_net.parameters() if p.requires_grad),
        "keras_channels_first": bool(keras_net.channels_first),
    }


# ---- runs ------------------------------------------------------------------------------------------------------------


def train(model: str, seed: int, out: Path, args) -> float:
    """One ``cifarlens train`` process; returns its wall seconds."""
    cmd = CIFARLENS + [
        "train",
        "--recipe",
        "conv_blocks",
        "--model",
        model,
        "--seed",
        str(seed),
        "--out",
        str(out),
        "--val-size",
        str(args.val_size),
        "--subset",
        str(args.subset),
        "--threads",
        str(args.threads),
        "--precision",
        args.precision,
        "--no-report",
        "--no-download",
        "--eval-test-every-epoch" if args.test_every_epoch else "--no-eval-test-every-epoch",
    ]
    if args.epochs:
        cmd += ["--epochs", str(args.epochs)]
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    print("$", " ".join(cmd[2:]), flush=True)
    started = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    return time.perf_counter() - started


def bench(run: Path, args) -> float | None:
    """Inference images/s at batch 256 (torch eager, fp32) of a run, or None when ``cifarlens bench`` fails."""
    out = run / "bench_keras_vs_torch.json"
    cmd = CIFARLENS + [
        "bench",
        str(run),
        "--backends",
        "torch",
        "--batch-sizes",
        "256",
        "--seconds",
        str(args.bench_seconds),
        "--test-images",
        "512",
        "--threads",
        str(args.threads),
        "--out",
        str(out),
    ]
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        print(f"bench failed for {run}: {done.stderr.strip().splitlines()[-1:]}", flush=True)
        return None
    return float(json.loads(out.read_text())["results"][0]["throughput"]["256"])


def read_run(run: Path, wall_s: float) -> dict:
    """What one run directory says: last-epoch val accuracy, final test accuracy, speed."""
    rows = RunDir(run).read_metrics()
    summary = json.loads((run / "summary.json").read_text())
    provenance = json.loads((run / "provenance.json").read_text())
    last = rows[-1]
    ips = [float(r["images_per_s"]) for r in rows]
    test = summary.get("test", {})
    return {
        "run": str(run),
        "epochs": len(rows),
        "val_acc": float(last["val_acc"]) if last.get("val_acc") else None,
        "val_accs": [float(r["val_acc"]) for r in rows if r.get("val_acc")],
        "test_acc": test.get("accuracy"),
        "test_images": test.get("n"),
        "train_loss": float(last["train_loss"]),
        "train_acc": float(last["train_acc"]),
        "images_per_s_median": statistics.median(ips),
        "images_per_s": ips,
        # summary train_s: the epochs' training seconds (steps only; no setup, no scoring)
        "train_s_per_epoch": float(summary["train"]["train_s"]) / len(rows),
        # metrics.csv seconds: the epoch with its validation scoring (and the test scoring after the last epoch)
        "wall_s_per_epoch": statistics.median(float(r["seconds"]) for r in rows),
        "precision": provenance.get("precision"),
        "torch_threads": provenance.get("torch_threads"),
        "process_wall_s": wall_s,
    }


def framework_summary(name: str, runs: list[dict], params: int, inference: float | None) -> dict:
    vals = [r["val_acc"] for r in runs if r["val_acc"] is not None]
    tests = [r["test_acc"] for r in runs if r["test_acc"] is not None]
    return {
        "framework": name,
        "params": params,
        "seeds": len(runs),
        "val_acc_mean": statistics.mean(vals) if vals else None,
        "val_acc_std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
        "test_acc_mean": statistics.mean(tests) if tests else None,
        "test_acc_std": statistics.stdev(tests) if len(tests) > 1 else 0.0,
        "train_images_per_s": statistics.median(r["images_per_s_median"] for r in runs),
        "train_s_per_epoch": statistics.median(r["train_s_per_epoch"] for r in runs),
        "wall_s_per_epoch": statistics.median(r["wall_s_per_epoch"] for r in runs),
        "inference_images_per_s_b256": inference,
        "runs": runs,
    }


# ---- output ----------------------------------------------------------------------------------------------------------


def _pct(mean, std, n) -> str:
    if mean is None:
        return "-"
    return f"{100 * mean:.2f} ± {100 * std:.2f}" if n > 1 else f"{100 * mean:.2f}"


def markdown(result: dict) -> str:
    torch_row, keras_row = result["frameworks"]
    lines = [
        (
            f"{result['date']}, {result['cpu']['name']}, torch {result['versions']['torch']}, keras "
            f"{result['versions']['keras']}, {result['precision']} (`--precision {result['args']['precision']}`), "
            f"{result['threads']} threads; {result['train_images']} training / {result['args']['val_size']} held-out "
            f"/ {result['test_images']} test images, {result['epochs']} epochs, seeds {result['seeds']}; Keras input "
            f"`{result['keras_input']}`."
        ),
        "",
        (
            "| framework | params | val acc % (mean ± std) | test acc % (JPEG) | train img/s | s/epoch (train) | "
            "s/epoch (wall) | infer img/s b=256 |"
        ),
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in (torch_row, keras_row):
        infer = row["inference_images_per_s_b256"]
        lines.append(
            f"| {row['framework']} | {row['params']:,} | {_pct(row['val_acc_mean'], row['val_acc_std'], row['seeds'])} "
            "| "
            f"{_pct(row['test_acc_mean'], row['test_acc_std'], row['seeds'])} | {row['train_images_per_s']:.0f} | "
            f"{row['train_s_per_epoch']:.1f} | {row['wall_s_per_epoch']:.1f} "
            f"| {'-' if infer is None else f'{infer:.0f}'} |"
        )
    r = result["ratios"]

    def ratio(v, fmt):
        return "-" if v is None else fmt.format(v)

    lines.append(
        f"| Keras / PyTorch | | {ratio(r['val_acc_points'], '{:+.2f} points')} "
        f"| {ratio(r['test_acc_points'], '{:+.2f} points')} "
        f"| {r['train_images_per_s']:.2f}x | {r['train_s_per_epoch']:.2f}x | {r['wall_s_per_epoch']:.2f}x | "
        f"{ratio(r['inference_images_per_s'], '{:.2f}x')} |"
    )
    return "\n".join(lines)


def ratios(t: dict, k: dict) -> dict:
    def diff(key):
        return None if t[key] is None or k[key] is None else 100 * (k[key] - t[key])

    ti, ki = t["inference_images_per_s_b256"], k["inference_images_per_s_b256"]
    return {
        "val_acc_points": diff("val_acc_mean"),
        "test_acc_points": diff("test_acc_mean"),
        "train_images_per_s": k["train_images_per_s"] / t["train_images_per_s"],
        "train_s_per_epoch": k["train_s_per_epoch"] / t["train_s_per_epoch"],
        "wall_s_per_epoch": k["wall_s_per_epoch"] / t["wall_s_per_epoch"],
        "inference_images_per_s": ki / ti if ti and ki else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=0, help="epochs per run (0: the recipe's 25)")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds; each trains both models")
    parser.add_argument("--val-size", type=int, default=5000, help="training images held out for the val accuracy")
    parser.add_argument(
        "--subset", type=int, default=0, help="stratified subset of N images for a quick check (0: all)"
    )
    parser.add_argument(
        "--keras-input",
        choices=("normalize", "scale"),
        default="normalize",
        help="normalize: a Normalization layer with CIFAR-10 mean/std, the PyTorch model's input; "
        "scale: 0-1 pixels only, the seed report's Keras input",
    )
    parser.add_argument(
        "--precision", default="auto", help="--precision of both runs (auto: bf16 on a CPU with native bf16)"
    )
    parser.add_argument("--threads", type=int, default=0, help="--threads of both runs (0: torch's default)")
    parser.add_argument("--test-every-epoch", action="store_true", help="also score the test split after every epoch")
    parser.add_argument(
        "--bench",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="measure inference images/s with `cifarlens bench` (first seed)",
    )
    parser.add_argument("--bench-seconds", type=float, default=2.0, help="seconds per bench measurement")
    parser.add_argument("--data-dir", default=os.environ.get("CIFARLENS_DATA_DIR"), help="default $CIFARLENS_DATA_DIR")
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "keras_vs_torch", help="run directories")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "keras_vs_torch.json")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    workdir = args.workdir / stamp
    os.environ["KERAS_BACKEND"] = "torch"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    keras_file = workdir / f"conv_blocks_{args.keras_input}.keras"
    write_keras_model(keras_file, args.keras_input)
    params = parameter_counts(keras_file)
    print(
        f"trainable parameters: PyTorch conv_blocks {params['torch']:,}, Keras {params['keras']:,} "
        f"(as cifarlens trains it: {params['keras_in_cifarlens']:,}; "
        f"Keras non-trainable {params['keras_non_trainable']:,}"
        f" BN moving statistics); cifarlens runs it channels_first: {params['keras_channels_first']}",
        flush=True,
    )
    if not params["torch"] == params["keras"] == params["keras_in_cifarlens"]:
        raise SystemExit("the two models do not have the same trainable parameters; they are not the same architecture")
    if not params["keras_channels_first"]:
        print("warning: cifarlens could not rebuild the Keras model channels_first; its speed includes transposes")

    models = {"PyTorch": "conv_blocks", "Keras": f"keras:{keras_file}"}
    runs: dict[str, list[dict]] = {name: [] for name in models}
    started = time.perf_counter()
    for seed in seeds:
        for name, model in models.items():
            out = workdir / f"{name.lower()}-seed{seed}"
            wall = train(model, seed, out, args)
            runs[name].append(read_run(out, wall))
            r = runs[name][-1]
            print(
                json.dumps(
                    {
                        "framework": name,
                        "seed": seed,
                        "val_acc": r["val_acc"],
                        "test_acc": r["test_acc"],
                        "images_per_s": round(r["images_per_s_median"], 1),
                    }
                ),
                flush=True,
            )
    inference = {name: bench(Path(runs[name][0]["run"]), args) if args.bench else None for name in models}

    import keras
    import torch

    frameworks = [
        framework_summary("PyTorch", runs["PyTorch"], params["torch"], inference["PyTorch"]),
        framework_summary("Keras", runs["Keras"], params["keras"], inference["Keras"]),
    ]
    first = runs["PyTorch"][0]
    result = {
        "benchmark": "keras_vs_torch (issue 25)",
        "command": "python " + " ".join([str(Path(sys.argv[0]))] + sys.argv[1:]),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_name(),
        "versions": {"torch": torch.__version__, "keras": keras.__version__, "python": platform.python_version()},
        "git_sha": subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip(),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "recipe": "conv_blocks",
        "epochs": first["epochs"],
        "seeds": seeds,
        "precision": first["precision"],
        "threads": first["torch_threads"],
        "train_images": args.subset or 50_000 - args.val_size,  # prepare_data: val held out first, then the subset
        "test_images": first["test_images"],
        "keras_input": args.keras_input,
        "keras_file": str(keras_file),
        "parameters": params,
        "frameworks": frameworks,
        "ratios": ratios(*frameworks),
        "projected_train_s_per_epoch_full": {  # training seconds of one epoch on all 50,000 - val_size images
            row["framework"]: (50_000 - args.val_size) / row["train_images_per_s"] for row in frameworks
        },
        "total_s": time.perf_counter() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print()
    print(markdown(result))
    full = 50_000 - args.val_size
    print(
        f"\nprojected to {full:,} training images: "
        + ", ".join(
            f"{row['framework']} {full / row['train_images_per_s']:.0f} s/epoch (training only)" for row in frameworks
        )
    )
    print(f"wrote {args.out}; run directories under {workdir}")


if __name__ == "__main__":
    main()
