"""Pin training behaviour across a refactor: train small fixed runs, print their weights hash and metrics.

    python benchmarks/behaviour_pin.py --out /tmp/pin-before   # on the old code
    python benchmarks/behaviour_pin.py --out /tmp/pin-after    # on the new code; the JSON files must match

Each run is a 2-epoch, 2,000-image fp32 run through the CLI (``--recipe fast`` with 1 of its 2 epochs
at 24 px, and ``--recipe resnet18``). The hash covers every tensor of model.safetensors, so "same hash"
means bit-identical final weights; the losses and accuracies are metrics.csv's, as written.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from cifarlens.run import RunDir

RUNS = {
    "fast": ["--recipe", "fast", "--early-epochs", "1"],
    "resnet18": ["--recipe", "resnet18"],
}
COMMON = ["--epochs", "2", "--precision", "fp32", "--no-report", "--seed", "0"]
COLUMNS = ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc", "lr")


def weights_sha256(path: Path) -> str:
    """SHA-256 over the tensors of a safetensors file, by sorted name (the header's text is left out)."""
    from safetensors.torch import load_file

    digest = hashlib.sha256()
    for name, tensor in sorted(load_file(str(path)).items()):
        digest.update(name.encode())
        digest.update(tensor.contiguous().view(-1).view(dtype=__import__("torch").uint8).numpy().tobytes())
    return digest.hexdigest()


def pin(out: Path, name: str, flags: list[str], subset: int = 2000) -> dict:
    run = out / name
    cmd = [sys.executable, "-m", "cifarlens.cli", "train", *flags, *COMMON, "--subset", str(subset), "--out", str(run)]
    subprocess.run(cmd, check=True, env=os.environ | {"COLUMNS": "200"})
    rows = [{k: r[k] for k in COLUMNS if k in r} for r in RunDir(run).read_metrics()]
    summary = json.loads((run / "summary.json").read_text())
    return {
        "weights_sha256": weights_sha256(run / "model.safetensors"),
        "metrics": rows,
        "test_accuracy": {k: v["accuracy"] for k, v in summary.items() if isinstance(v, dict) and "accuracy" in v},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the runs and pin.json")
    parser.add_argument("--only", default=",".join(RUNS), help="comma-separated subset of: " + ", ".join(RUNS))
    parser.add_argument(
        "--subset", type=int, default=2000, help="training images of each run (pins compare equal sizes)"
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    unknown = sorted(set(args.only.split(",")) - RUNS.keys())
    if unknown:
        parser.error(f"unknown run {unknown[0]!r} in --only; choose from {', '.join(RUNS)}")
    result = {name: pin(args.out, name, RUNS[name], args.subset) for name in args.only.split(",")}
    (args.out / "pin.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
