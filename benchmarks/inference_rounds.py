"""Images/s of inference backends at one batch size, measured round-robin so that slow spells hit all alike.

``cifarlens bench`` measures each backend once, one after the other; on a shared or virtual CPU a slow spell
during one backend's turn moves its ratio. This script measures every backend ``--rounds`` times in turn
(``--seconds`` each, median seconds per call within a turn) and reports, per backend, every round's images/s
and the median over rounds of its ratio to the first backend measured in the same round.

    python benchmarks/inference_rounds.py --run runs/fast --backends torch,onnxruntime-int8,openvino-int8
"""

from __future__ import annotations

import argparse
import json
import statistics
from datetime import date
from pathlib import Path

import numpy as np
import torch

from cifarlens.device import cpu_name
from cifarlens.export.bench import timed_calls
from cifarlens.export.runtime import open_classifier


def rounds(classifiers: dict, batch: np.ndarray, n_rounds: int, seconds: float) -> dict[str, list[float]]:
    """images/s of each classifier, ``n_rounds`` turns each, in the same order every round."""
    result: dict[str, list[float]] = {name: [] for name in classifiers}
    for _ in range(n_rounds):
        for name, classifier in classifiers.items():
            classifier.run(batch)  # warm: the first call of a turn may reallocate
            result[name].append(len(batch) / statistics.median(timed_calls(lambda: classifier.run(batch), seconds)))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="run directory, exported with cifarlens export --quantize int8")
    parser.add_argument("--backends", default="torch,torch-bf16,onnxruntime-int8,openvino-bf16,openvino-int8")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=2.0, help="per backend per round")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    names = args.backends.split(",")
    classifiers = {name: open_classifier(args.run, backend=name, threads=args.threads) for name in names}
    batch = np.random.default_rng(0).integers(0, 256, (args.batch_size, 3, 32, 32), dtype=np.uint8)
    speeds = rounds(classifiers, batch, args.rounds, args.seconds)
    first = np.array(speeds[names[0]])
    print(f"{cpu_name()}, {args.threads} threads, batch {args.batch_size}, {args.rounds} rounds (images/s per round)")
    summary = {}
    for name, values in speeds.items():
        ratio = float(np.median(np.array(values) / first))
        summary[name] = {"images_per_s": values, "median_ratio": ratio}
        print(f"{name:18s} " + " ".join(f"{v:6.0f}" for v in values) + f"   median {ratio:.2f}x {names[0]}")
    if args.out:
        args.out.write_text(json.dumps({"date": date.today().isoformat(), "cpu": cpu_name(), "run": args.run,
                                        "threads": args.threads, "batch_size": args.batch_size,
                                        "seconds": args.seconds, "backends": summary}, indent=2) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
