"""Corruption robustness and calibration of the `fast` recipe against training options for robustness, paired by seed.

For each recipe variant and seed: ``cifarlens train`` with ``--val-size`` held out (its own process, timed), then
in this process the library calls of ``evaluate --split val --tta-translate`` (the held-out accuracy as the recipe
scores it), ``calibrate`` (temperature fitted on half of the held-out split, judged on the other half) and
``robustness`` on the held-out split (all 19 corruptions x 5 severities, no TTA; timed). Everything is scored on
exact training pixels; the JPEG-recovered test split is reported beside, never as the headline. Variants:

    fast           cifarlens train --recipe fast
    fast-augmix    cifarlens train --recipe fast --augment crop,altflip,augmix

``--timing-backends torch,onnxruntime`` also times the whole robustness table of the first run on each backend
(the ONNX ones after ``cifarlens export``), with the accuracy each keeps.

    python benchmarks/robustness.py --variants fast,fast-augmix --seeds 0,1,2 \
        --out benchmarks/results/robustness_fast.json

Finished steps are kept in --workdir (runs and their results are reused), so an interrupted call continues.
Needs CIFARLENS_DATA_DIR (the folder holding cifar-10-batches-py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

from cifarlens.evaluation import evaluate_run
from cifarlens.evaluation.calibrate import calibrate_run
from cifarlens.robustness.score import robustness_run

VARIANTS = {
    "fast": ["--recipe", "fast"],
    "fast-augmix": ["--recipe", "fast", "--augment", "crop,altflip,augmix"],
}


def cifarlens(*args: str) -> tuple[str, float]:
    """Run one cifarlens command; its stdout and wall seconds (a failure stops the benchmark, showing why)."""
    start = time.perf_counter()
    env = os.environ | {"COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-m", "cifarlens.cli", *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"cifarlens {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return proc.stdout, time.perf_counter() - start


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def robustness_config(run: Path, args, backend: str = "torch"):
    """What ``cifarlens robustness RUN --split val --corruptions C --severities S [--n N] --backend B`` runs."""
    from cifarlens.robustness.config import RobustnessConfig

    return RobustnessConfig(
        run=str(run), split="val", corruptions=args.corruptions, severities=args.severities, n=args.n, backend=backend
    )


def one_run(variant: str, seed: int, args, work: Path) -> dict:
    """Train, calibrate and score one (variant, seed); kept in ``work/VARIANT-sSEED/bench.json``."""
    run = work / f"{variant}-s{seed}"
    done_file = run / "bench.json"
    if done_file.is_file():
        return json.loads(done_file.read_text())
    train = VARIANTS[variant] + ["--seed", str(seed), "--val-size", str(args.val_size), "--no-report"]
    train += ["--subset", str(args.subset)] if args.subset else []
    train += ["--epochs", str(args.epochs)] if args.epochs else []
    clock = work / f"{variant}-s{seed}.train.json"  # the training wall time, kept beside the run
    if not clock.is_file():
        _, train_seconds = cifarlens("train", *train, "--out", str(run))
        clock.write_text(json.dumps({"train_seconds": train_seconds}))
    train_seconds = json.loads(clock.read_text())["train_seconds"]
    evaluate_run(run, split="val", tta_translate=True)  # the held-out accuracy as the recipe scores it
    calibrate_seconds = timed(lambda: calibrate_run(run))
    start = time.perf_counter()
    numbers = robustness_run(robustness_config(run, args))
    robustness_seconds = time.perf_counter() - start
    summary = json.loads((run / "summary.json").read_text())
    calibration = json.loads((run / "calibration.json").read_text())
    held = calibration["scores"]["val (other half)"]
    result = {
        "variant": variant,
        "seed": seed,
        "train_flags": train,
        "train_seconds": train_seconds,
        "calibrate_seconds": calibrate_seconds,
        "robustness_seconds": robustness_seconds,
        "val_accuracy": summary["val_tta_translate"]["accuracy"],  # held out, with the recipe's TTA
        "test_accuracy_jpeg": (summary.get("test_tta_translate") or summary.get("test") or {}).get("accuracy"),
        "clean_accuracy_no_tta": numbers["clean"]["accuracy"],
        "mean_corruption_accuracy": numbers["mean_corruption_accuracy"],
        "extra_mean_accuracy": numbers["extra_mean_accuracy"],
        "benchmark_complete": numbers["benchmark_complete"],
        "ece_before": held["before"]["ece"],
        "ece_after": held["after"]["ece"],
        "nll_before": held["before"]["nll"],
        "nll_after": held["after"]["nll"],
        "temperature": calibration["temperature"],
        "corruptions": {name: c["mean_accuracy"] for name, c in numbers["corruptions"].items()},
        "generate_seconds": {name: c["generate_s"] for name, c in numbers["corruptions"].items()},
        "score_seconds": {name: c["score_s"] for name, c in numbers["corruptions"].items()},
        "robustness_key": numbers["key"],
    }
    done_file.write_text(json.dumps(result, indent=2))
    return result


def timing(run: Path, backends: list[str], args) -> list[dict]:
    """The whole robustness table of ``run`` on each backend: wall seconds and the accuracy it keeps."""
    rows = []
    for backend in backends:
        graph = run / "export" / ("model.int8.onnx" if backend.endswith("int8") else "model.onnx")
        if backend.startswith(("onnxruntime", "openvino")) and not graph.is_file():
            cifarlens("export", str(run), *(["--quantize", "int8"] if backend.endswith("int8") else []))
        start = time.perf_counter()
        numbers = robustness_run(robustness_config(run, args, backend))
        seconds = time.perf_counter() - start
        generate = sum(c["generate_s"] for c in numbers["cells"])
        score = sum(c["score_s"] for c in numbers["cells"])
        rows.append({"backend": backend, "wall_seconds": seconds, "generate_seconds": generate,
                     "score_seconds": score, "mean_corruption_accuracy": numbers["mean_corruption_accuracy"],
                     "clean_accuracy": numbers["clean"]["accuracy"], "cells": len(numbers["cells"])})  # fmt: skip
    return rows


def mean_std(values: list[float]) -> list[float]:
    return [float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0]


def aggregate(results: list[dict], variants: list[str]) -> dict:
    """Mean ± std per variant, and each variant minus `fast` paired by seed."""
    keys = ("val_accuracy", "test_accuracy_jpeg", "clean_accuracy_no_tta", "mean_corruption_accuracy",
            "extra_mean_accuracy", "ece_before", "ece_after", "train_seconds", "robustness_seconds")  # fmt: skip
    table = {}
    for variant in variants:
        rows = [r for r in results if r["variant"] == variant]
        table[variant] = {k: mean_std([r[k] for r in rows if r[k] is not None]) for k in keys} | {"seeds": len(rows)}
    paired = {}
    base = {r["seed"]: r for r in results if r["variant"] == variants[0]}
    for variant in variants[1:]:
        pairs = [(r, base[r["seed"]]) for r in results if r["variant"] == variant and r["seed"] in base]
        paired[variant] = {
            "seeds": [r["seed"] for r, _ in pairs],
            "clean_points": mean_std([100 * (r["val_accuracy"] - b["val_accuracy"]) for r, b in pairs]),
            "corruption_points": mean_std(
                [100 * (r["mean_corruption_accuracy"] - b["mean_corruption_accuracy"]) for r, b in pairs]
            ),
            "time_ratio": mean_std([r["train_seconds"] / b["train_seconds"] for r, b in pairs]),
        }
    return {"by_variant": table, "paired_against_" + variants[0]: paired}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", default="fast,fast-augmix", help=f"comma-separated, from {', '.join(VARIANTS)}")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--val-size", type=int, default=5000)
    parser.add_argument("--subset", type=int, default=0, help="train on a stratified subset (smoke tests)")
    parser.add_argument("--epochs", type=int, default=0, help="override the recipe's epochs (smoke tests)")
    parser.add_argument("--n", type=int, default=0, help="score this many held-out images (0: all)")
    parser.add_argument("--corruptions", default="all")
    parser.add_argument("--severities", default="1-5")
    parser.add_argument("--timing-backends", default="", help="e.g. torch,onnxruntime: time the first run's table")
    parser.add_argument("--workdir", default="/tmp/cifarlens-robustness-bench")
    parser.add_argument("--out", default="benchmarks/results/robustness_fast.json")
    args = parser.parse_args()
    from cifarlens.device import cpu_name

    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        sys.exit(f"unknown variant {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    results = []
    for seed in seeds:  # seed-major, so that an interrupted call has whole pairs
        for variant in variants:
            results.append(one_run(variant, seed, args, work))
            r = results[-1]
            scores = f"val {r['val_accuracy']:.2%}, corrupted {r['mean_corruption_accuracy']:.2%}"
            ece = f"ECE {r['ece_before']:.2%} -> {r['ece_after']:.2%}"
            print(f"{variant} seed {seed}: {scores}, {ece}, train {r['train_seconds']:.0f}s", flush=True)
    backends = [b for b in args.timing_backends.split(",") if b]
    out = {
        "command": "python " + " ".join(sys.argv),
        "date": date.today().isoformat(),
        "cpu": cpu_name(),
        "threads": os.cpu_count(),
        "runs": results,
        **aggregate(results, variants),
        "timing": timing(work / f"{variants[0]}-s{seeds[0]}", backends, args) if backends else [],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: out[k] for k in out if k not in ("runs",)}, indent=2))


if __name__ == "__main__":
    main()
