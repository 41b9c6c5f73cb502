"""onnxruntime's int8 options on one exported run, side by side: which format, granularity and optimisation level win.

Quantises the run's fp32 graph (``RUN/export/model.onnx``) once per option set, with the same 512 calibration
training images ``cifarlens export`` uses, and measures every variant together with PyTorch eager fp32 and the
fp32 graph, round-robin (``cifarlens.deploy.bench.throughput_rounds``, the same as ``cifarlens bench``):

* format: QDQ (what ``cifarlens export`` writes) against QOperator;
* per-channel against per-tensor weight scales;
* onnxruntime's graph optimisation level (disable, basic, extended, all) on the exported QDQ graph;
* threads: 1 against the machine's count on the exported QDQ graph.

Accuracy is on the run's whole test split. The table is Markdown for BENCHMARKS.md, the numbers go to ``--out``.

    python benchmarks/onnx_int8_options.py --run runs/fast --out benchmarks/results/onnx_int8_options.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from datetime import date
from pathlib import Path

import numpy as np
import torch

from cifarlens.deploy.bench import accuracy_percent, throughput_rounds
from cifarlens.deploy.classifier import Classifier, read_sidecar, sidecar_path
from cifarlens.deploy.onnx_export import EvalImages, load_eval_images
from cifarlens.deploy.quantize import quantize_int8
from cifarlens.deploy.runtime import OnnxClassifier, default_onnx_path, open_classifier
from cifarlens.device import cpu_name
from cifarlens.run import write_json

QUANTISED = {  # variant -> quantize_int8 options
    "QDQ per-channel": {"quant_format": "QDQ", "per_channel": True},
    "QDQ per-tensor": {"quant_format": "QDQ", "per_channel": False},
    "QOperator per-channel": {"quant_format": "QOperator", "per_channel": True},
    "QOperator per-tensor": {"quant_format": "QOperator", "per_channel": False},
}


def variants(run: Path, workdir: Path, threads: int) -> tuple[dict[str, Classifier], EvalImages]:
    """Every classifier to measure by name (the first is the reference), and the run's test images."""
    fp32 = default_onnx_path(run)
    if not fp32.is_file():
        raise SystemExit(f"{fp32} is missing; run cifarlens export {run} first")
    data = load_eval_images(run)
    classifiers = {
        "torch eager fp32": open_classifier(run, backend="torch", threads=threads),
        "onnxruntime fp32": OnnxClassifier(fp32, threads=threads),
    }
    graphs = {name: workdir / (name.replace(" ", "_") + ".onnx") for name in QUANTISED}
    for name, options in QUANTISED.items():
        details = quantize_int8(fp32, graphs[name], data.calibration, **options)
        write_json(sidecar_path(graphs[name]), read_sidecar(fp32) | {"quantization": details})  # classes, input
        classifiers[name] = OnnxClassifier(graphs[name], threads=threads)
    exported = graphs["QDQ per-channel"]  # what cifarlens export writes
    for level in ("disable", "basic", "extended"):
        classifiers[f"QDQ per-channel, optimisation {level}"] = OnnxClassifier(
            exported, threads=threads, optimization=level
        )
    if threads > 1:
        classifiers["QDQ per-channel, 1 thread"] = OnnxClassifier(exported, threads=1)
    return classifiers, data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, type=Path, help="run directory exported with cifarlens export")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=10.0, help="per variant, split over the rounds")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    for option in ("batch_size", "rounds", "seconds", "threads"):
        if getattr(args, option) <= 0:
            parser.error(f"--{option.replace('_', '-')} must be positive, got {getattr(args, option)}")

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="cifarlens-int8-options-") as tmp:
        classifiers, data = variants(args.run, Path(tmp), args.threads)
        accuracy = {name: accuracy_percent(c, data.test_images, data.test_labels) for name, c in classifiers.items()}
        speeds = throughput_rounds(
            classifiers, data.test_images, batch_sizes=[args.batch_size], seconds=args.seconds, rounds=args.rounds
        )
    reference = np.array(speeds["torch eager fp32"][args.batch_size])
    rows = {}
    print(
        f"{cpu_name()}, {args.threads} threads, batch {args.batch_size}, {args.rounds} rounds; "
        f"{len(data.test_labels)} test images\n"
    )
    print("| variant | accuracy % | img/s (median) | vs torch eager fp32 (median of per-round ratios) |")
    print("|---|---:|---:|---:|")
    for name, per_size in speeds.items():
        values = per_size[args.batch_size]
        ratio = float(np.median(np.array(values) / reference))
        rows[name] = {"accuracy": accuracy[name], "images_per_s": values, "median_ratio": ratio}
        print(f"| {name} | {accuracy[name]:.2f} | {statistics.median(values):,.0f} | {ratio:.2f}x |")
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "date": date.today().isoformat(),
                    "cpu": cpu_name(),
                    "run": str(args.run),
                    "threads": args.threads,
                    "batch_size": args.batch_size,
                    "rounds": args.rounds,
                    "seconds": args.seconds,
                    "variants": rows,
                },
                indent=2,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
