"""A model trained outside cifarlens, imported and run through the lens, beside cifarlens's own ResNet-18.

``benchmarks/foreign/resnet18.py`` is a CIFAR-10 ResNet-18 written independently of cifarlens. This script
trains it with a plain PyTorch loop (its own CIFAR-10 reader, no cifarlens code), saves the checkpoint the way
a DataParallel script does (``module.`` names nested under ``model`` beside the epoch and the optimizer), and
imports it with ``cifarlens import``. It then trains ``cifarlens train --model resnet18`` on as many images
(cifarlens's stratified subset), with the same epochs, batch, optimizer, schedule, augmentation and label
smoothing; ``--subset`` below 10,000 also caps cifarlens's test split, so keep it at 10,000 or more to score
both on all 10,000. Both runs go through ``evaluate``, ``evaluate --tta``, ``explain rank --n N`` and
``export`` + ``bench``, each command timed, in the same process, on the same CPU.

    python benchmarks/import_any_model.py --subset 10000 --epochs 3 --rank-n 32 \
        --out benchmarks/results/import_any_model.json

Needs CIFARLENS_DATA_DIR (the folder holding cifar-10-batches-py).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def read_cifar(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """The official training batches: uint8 (N, 3, 32, 32) images and int64 labels, read by hand."""
    folder = root / "cifar-10-batches-py" if (root / "cifar-10-batches-py").is_dir() else root
    images, labels = [], []
    for i in range(1, 6):
        with open(folder / f"data_batch_{i}", "rb") as f:
            batch = pickle.load(f, encoding="latin1")  # the official files: trusted pickles of numpy arrays
        images.append(batch["data"].reshape(-1, 3, 32, 32))
        labels.extend(batch["labels"])
    return np.concatenate(images), np.array(labels, dtype=np.int64)


def train_plain(images, labels, args) -> tuple[torch.nn.Module, torch.optim.Optimizer, float]:
    """The user's loop: SGD with Nesterov momentum, cosine decay, random crop (pad 4) and flip, label smoothing."""
    sys.path.insert(0, str(HERE / "foreign"))
    from resnet18 import make

    torch.manual_seed(args.seed)
    model = make()
    x = torch.from_numpy(images).float().div(255)
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    y = torch.from_numpy(labels)
    steps = args.epochs * (len(y) // args.batch_size)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    start = time.perf_counter()
    model.train()
    for epoch in range(args.epochs):
        order = torch.randperm(len(y))
        for b in range(len(y) // args.batch_size):
            idx = order[b * args.batch_size : (b + 1) * args.batch_size]
            xb = F.pad(x[idx], (4, 4, 4, 4), mode="reflect")
            dx, dy = np.random.randint(0, 9, size=2)
            xb = xb[:, :, dy : dy + 32, dx : dx + 32]
            flip = torch.rand(len(idx)) < 0.5
            xb = torch.where(flip.view(-1, 1, 1, 1), xb.flip(3), xb)
            loss = F.cross_entropy(model(xb), y[idx], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        print(f"plain loop: epoch {epoch + 1}/{args.epochs} loss {loss.item():.3f}", flush=True)
    return model.eval(), opt, time.perf_counter() - start


def cifarlens(*args: str) -> tuple[str, float]:
    """Run a cifarlens command as a user would; its output and wall seconds."""
    start = time.perf_counter()
    env = os.environ | {"CIFARLENS_TRUST_CODE": "1", "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-m", "cifarlens.cli", *args], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"cifarlens {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return proc.stdout, seconds


def through_the_lens(run: Path, args) -> dict:
    """evaluate --tta, explain rank and export + bench on ``run``: their results and seconds."""
    seconds = {}
    _, seconds["evaluate"] = cifarlens("evaluate", str(run))
    _, seconds["evaluate_tta"] = cifarlens("evaluate", str(run), "--tta")
    rank = ["--n", str(args.rank_n)] + (["--methods", args.rank_methods] if args.rank_methods else [])
    _, seconds["explain_rank"] = cifarlens("explain", "rank", str(run), *rank)
    _, seconds["export"] = cifarlens("export", str(run))
    bench = ["--batch-sizes", "1,64", "--backends", "torch,onnxruntime", "--seconds", str(args.bench_seconds)]
    _, seconds["bench"] = cifarlens("bench", str(run), *bench)
    summary = json.loads((run / "summary.json").read_text())
    rank = json.loads((run / "explain" / "rank" / "rank.json").read_text())
    bench = json.loads((run / "export" / "bench.json").read_text())
    return {
        "test_acc": summary["test"]["accuracy"],
        "test_tta_acc": summary["test_tta"]["accuracy"],
        "test_n": summary["test"]["n"],
        "rank_top": [
            {k: row[k] for k in ("method", "deletion_auc", "insertion_auc", "randomisation_corr_all", "verdict")}
            for row in rank["rows"][:5]
        ],
        "bench": [
            {k: row.get(k) for k in ("backend", "accuracy", "latency_p50_ms", "throughput")} for row in bench["results"]
        ],
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subset", type=int, default=10000, help="training images (the first of a seeded shuffle)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rank-n", type=int, default=32)
    parser.add_argument("--rank-methods", default="", help="explain rank --methods (default: rank's own list)")
    parser.add_argument("--bench-seconds", type=float, default=2.0, help="bench --seconds")
    parser.add_argument("--no-check", action="store_true", help="import --no-check (the smoke test's untrained net)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--workdir", type=Path, default=None, help="where the runs go (default: a temporary folder)")
    parser.add_argument(
        "--reuse", action="store_true", help="keep what --workdir already holds (the checkpoint, the two runs)"
    )
    args = parser.parse_args()
    data_dir = Path(os.environ["CIFARLENS_DATA_DIR"])
    from cifarlens.device import cpu_name

    if args.reuse and args.workdir is None:
        raise SystemExit("--reuse needs --workdir")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="import_any_model_"))
    work.mkdir(parents=True, exist_ok=True)
    phases = work / "phases.json"  # seconds of the phases done, so that --reuse skips them and keeps their times
    done = json.loads(phases.read_text()) if args.reuse and phases.is_file() else {}
    checkpoint, imported, ours = work / "resnet18_dataparallel.pt", work / "imported", work / "cifarlens"
    if not (args.reuse and checkpoint.is_file()):
        images, labels = read_cifar(data_dir)
        keep = np.random.default_rng(args.seed).permutation(len(labels))[: args.subset]
        model, opt, done["train_seconds_plain_loop"] = train_plain(images[keep], labels[keep], args)
        state = {"module." + k: v for k, v in model.state_dict().items()}
        torch.save({"epoch": args.epochs, "model": state, "optimizer": opt.state_dict()}, checkpoint)
        phases.write_text(json.dumps(done))
    if not (args.reuse and (imported / "model.safetensors").is_file()):
        source = f"{HERE / 'foreign' / 'resnet18.py'}:make"
        flags = ["--weights", str(checkpoint), "--trust-code", "--out", str(imported)] + ["--no-check"] * args.no_check
        done["import_output"], done["import_seconds"] = cifarlens("import", source, *flags)
        phases.write_text(json.dumps(done))
    train_flags = [
        "--model",
        "resnet18",
        "--recipe",
        "resnet18",
        "--subset",
        str(args.subset),
        "--epochs",
        str(args.epochs),
        "--batch-size",
        str(args.batch_size),
        "--optimizer",
        "sgd",
        "--lr",
        str(args.lr),
        "--momentum",
        "0.9",
        "--weight-decay",
        "5e-4",
        "--schedule",
        "cosine",
        "--augment",
        "crop,flip",
        "--crop-padding",
        "4",
        "--label-smoothing",
        "0.1",
        "--precision",
        "fp32",
        "--seed",
        str(args.seed),
        "--no-evaluate",
        "--no-eval-test-every-epoch",
        "--no-report",
    ]
    if not (args.reuse and (ours / "model.safetensors").is_file()):
        _, done["train_seconds_cifarlens_train"] = cifarlens("train", *train_flags, "--out", str(ours))
        phases.write_text(json.dumps(done))
    import_out = done.get("import_output", "")
    plain_seconds, import_seconds = done.get("train_seconds_plain_loop"), done.get("import_seconds")
    ours_seconds = done.get("train_seconds_cifarlens_train")
    result = {
        "command": "python benchmarks/import_any_model.py " + " ".join(sys.argv[1:]),
        "date": date.today().isoformat(),
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
        "settings": vars(args) | {"out": str(args.out), "workdir": str(work)},
        "import_output": import_out.splitlines(),
        "imported": {"train_seconds_plain_loop": plain_seconds, "import_seconds": import_seconds}
        | through_the_lens(imported, args),
        "cifarlens_resnet18": {"train_seconds_cifarlens_train": ours_seconds, "train_flags": train_flags}
        | through_the_lens(ours, args),
    }
    text = json.dumps(result, indent=2) + "\n"
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
