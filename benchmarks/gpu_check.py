"""The training and inference part of ``benchmarks/gpu_check.sh``: runs, bench, one JSON and one markdown table.

On the packed subset (``benchmarks/gpu_data.py``: 20,000 training images, 5,000 held out), each as the
``cifarlens train`` command a user runs: ``fast`` with 5 seeds and ``airbench94`` with 2, scored on the held-out images with
their recipes' TTA; then ``fast``, ``fast --compile`` and ``airbench94`` once each on the training images
repeated to 50,000, to time full-size epochs; then ``cifarlens bench`` of the first ``fast`` run for eager,
compiled and onnxruntime. Training seconds are the trainer's own (``summary.json``: ``train_s``, CUDA events
on a GPU, compilation apart in ``compile_s``). ``--dry-run`` does the same on the CPU with a tiny packed subset,
fewer epochs and a narrow net, so that the script is tested where no GPU is.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_data import pack, unpack

SEEDS = {"fast": [0, 1, 2, 3, 4], "airbench94": [0, 1]}
TIMED = [("fast", []), ("fast-compile", ["--recipe", "fast", "--compile"]), ("airbench94", [])]
FULL_SIZE = 50_000
HIVERGE_A100_S = 2.0  # hiverge/cifar10-speedrun's published A100 record, the anchor
# The dry run: a few hundred images, 2 epochs, airnet at a sixteenth of its width.
DRY = {"train": 400, "held_out": 100, "full_size": 1000, "seeds": {"fast": [0, 1], "airbench94": [0]},
       "args": ["--device", "cpu", "--no-eval-test-every-epoch", "--epochs", "2", "--model-args", "{width: 16, wide: 32}"],
       "recipe_args": {"fast": ["--early-epochs", "1"]}}  # fmt: skip


def train(name: str, args: list[str], seed: int, data: Path, work: Path, extra: list[str]) -> dict:
    """One ``cifarlens train`` command, run in this process (its start-up is no part of any figure, and paying
    it once keeps the check short); what its summary.json says, with its wall time."""
    from cifarlens.cli import app

    out = work / "runs" / f"{name}-{data.name}-s{seed}"
    recipe_args = args if args else ["--recipe", name]
    cmd = ["train", *recipe_args, "--seed", str(seed), "--data-dir", str(data), "--out", str(out), "--no-download",
           "--no-report", "--no-evaluate", *extra]  # fmt: skip
    print("$ cifarlens", " ".join(cmd), flush=True)
    start = time.perf_counter()
    code = app(cmd, standalone_mode=False)
    wall = time.perf_counter() - start
    if code:
        raise SystemExit(f"error: {name} seed {seed} failed (exit {code}); its output is above")
    summary = json.loads((out / "summary.json").read_text())["train"]
    acc, views = held_out_accuracy(out, summary["device"])
    return {"recipe": name, "seed": seed, "images": data.name, "run": str(out), "held_out_acc": acc, "tta": views,
            "train_s": summary["train_s"], "compile_s": summary["compile_s"], "wall_s": wall,
            "device": summary["device"], "precision": summary["precision"]}  # fmt: skip


def held_out_accuracy(run: Path, device: str) -> tuple[float, str]:
    """Accuracy on the run's test split, the held-out images, with its recipe's TTA, as its final evaluation
    scores it (fp32), without the plots that evaluation draws; and which TTA that was."""
    from cifarlens.evaluation.predict import Predictor
    from cifarlens.run import RunDir

    run = RunDir(run)
    tta, translate = run.config["tta"], run.config["tta_translate"]
    model, spec = run.load_model(device)
    test = run.load_data().test
    logits = Predictor(model, spec, device=device, tta=tta, tta_translate=translate).logits(test.images)
    return float((logits.argmax(1) == test.labels).float().mean()), "mirror + shifts" if translate else "mirror" if tta else "none"


def bench(run: str, work: Path, dry: bool) -> dict:
    out = work / "bench.json"
    options = ["--seconds", "0.2", "--test-images", "100", "--batch-sizes", "1,32"] if dry else \
              ["--seconds", "1", "--test-images", "5000", "--batch-sizes", "1,256,2000", "--device", "cuda"]  # fmt: skip
    cmd = [sys.executable, "-m", "cifarlens.cli", "bench", run, "--backends", "torch,torch-compile,onnxruntime",
           "--out", str(out), *options]  # fmt: skip
    print("$", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, check=False, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    print(proc.stdout[-4000:], flush=True)
    if proc.returncode:
        raise SystemExit(f"error: cifarlens bench failed (exit {proc.returncode}); its output is above")
    return json.loads(out.read_text())


def spread(values: list[float]) -> dict:
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values)}


def summarize(runs: list[dict], timed: list[dict]) -> dict:
    accuracy = {r: spread([x["held_out_acc"] for x in runs if x["recipe"] == r]) for r in SEEDS}
    subset_s = {r: spread([x["train_s"] for x in runs if x["recipe"] == r]) for r in SEEDS}
    full = {x["recipe"]: x for x in timed}
    ratio = full["fast"]["train_s"] / full["airbench94"]["train_s"]
    return {
        "held_out_acc": accuracy,
        "train_s_subset": subset_s,
        "train_s_full_size": {name: x["train_s"] for name, x in full.items()},
        "compile_s_full_size": {name: x["compile_s"] for name, x in full.items()},
        "fast_vs_airbench94_time": ratio,
        "fast_minus_airbench94_acc": accuracy["fast"]["mean"] - accuracy["airbench94"]["mean"],
        "goal_time_ratio_at_most_1": ratio <= 1.0,
        "goal_within_2x_of_hiverge_a100": full["fast"]["train_s"] <= 2 * HIVERGE_A100_S,
    }


def machine() -> dict:
    info = {"torch": torch.__version__, "python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
            "date": datetime.now(UTC).isoformat(timespec="seconds")}  # fmt: skip
    if torch.cuda.is_available():
        info |= {"gpu": torch.cuda.get_device_name(), "cuda": torch.version.cuda, "driver": _driver()}
    return info


def _driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], check=False, text=True,
                             capture_output=True, timeout=30).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip() or None


def pytest_counts(path: Path) -> dict:
    """passed/skipped/failed counts from the last line of ``pytest -q`` output."""
    text = path.read_text() if path.is_file() else ""
    return {word: int(n) for n, word in re.findall(r"(\d+) (passed|skipped|failed|errors?|deselected)", text)}


def markdown(result: dict) -> str:
    s, m = result["summary"], result["machine"]
    where = f"{m.get('gpu', 'CPU (dry run)')}, driver {m.get('driver', '-')}, CUDA {m.get('cuda', '-')}, torch {m['torch']}"
    lines = [f"# gpu_check {'(dry run) ' if result['dry_run'] else ''}{m['date']}", "", where, "",
             f"cuda tests: {result['pytest']}", "",
             f"Held-out accuracy with TTA ({result['subset']['train']} training images, {result['subset']['held_out']} held out):", "",
             "| recipe | seeds | held-out acc % | training s (subset) |", "| --- | ---: | ---: | ---: |"]  # fmt: skip
    for recipe, acc in s["held_out_acc"].items():
        t = s["train_s_subset"][recipe]
        lines.append(f"| {recipe} | {acc['n']} | {100 * acc['mean']:.2f} ± {100 * acc['std']:.2f} | "
                     f"{t['mean']:.2f} ± {t['std']:.2f} |")  # fmt: skip
    lines += ["", f"Full-size epochs ({result['subset']['full_size']} images an epoch, seed 0):", "",
              "| run | training s | compile s (apart) |", "| --- | ---: | ---: |"]  # fmt: skip
    for name, secs in s["train_s_full_size"].items():
        lines.append(f"| {name} | {secs:.2f} | {s['compile_s_full_size'][name]:.1f} |")
    lines += ["", (f"fast / airbench94 training time: {s['fast_vs_airbench94_time']:.2f}x; "
                   f"fast minus airbench94 held-out accuracy: {100 * s['fast_minus_airbench94_acc']:+.2f} points"), "",
              "| backend | accuracy % | p50 ms (b=1) | img/s at largest batch |", "| --- | ---: | ---: | ---: |"]  # fmt: skip
    for r in result["bench"]["results"]:
        big = max(r["throughput"], key=int)
        lines.append(f"| {r['backend']} | {r['accuracy']:.2f} | {r['latency_p50_ms']:.2f} | {r['throughput'][big]:,.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="scratch folder for data and runs")
    parser.add_argument("--out", type=Path, required=True, help="where gpu_check.json and gpu_check.md go")
    parser.add_argument("--packed", type=Path, default=Path("gpu_data"), help="the packed subset (gpu_data.py pack)")
    parser.add_argument("--pytest-log", type=Path, help="output of the cuda tests, for their counts")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny subset packed here from $CIFARLENS_DATA_DIR")
    args = parser.parse_args()
    seeds, extra, full_size = (DRY["seeds"], DRY["args"], DRY["full_size"]) if args.dry_run else (SEEDS, [], FULL_SIZE)
    packed = args.packed
    if args.dry_run:
        packed = args.work / "packed"
        pack(None, packed, DRY["train"], DRY["held_out"], seed=0, method=0)
    elif not (packed / "subset.json").is_file():
        raise SystemExit(f"error: no packed subset in {packed}; run python benchmarks/gpu_data.py pack, carry gpu_data")
    subset = unpack(packed, args.work / "subset")
    full = unpack(packed, args.work / f"full{full_size}", repeat_to=full_size)
    recipe_args = DRY["recipe_args"] if args.dry_run else {}
    runs = [train(r, [], seed, subset, args.work, extra + recipe_args.get(r, [])) for r in seeds for seed in seeds[r]]
    timed = [train(name, a, 0, full, args.work, extra + recipe_args.get(a[1] if a else name, [])) for name, a in TIMED]
    index = json.loads((packed / "subset.json").read_text())
    result = {
        "dry_run": args.dry_run,
        "machine": machine(),
        "subset": {"train": index["train"]["n"], "held_out": index["held_out"]["n"], "full_size": full_size},
        "pytest": pytest_counts(args.pytest_log) if args.pytest_log else {},
        "summary": summarize(runs, timed),
        "runs": runs,
        "timed": timed,
        "bench": bench(runs[0]["run"], args.work, args.dry_run),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "gpu_check.md").write_text(markdown(result))
    print(markdown(result))
    print(f"wrote {args.out / 'gpu_check.json'} and {args.out / 'gpu_check.md'}")


if __name__ == "__main__":
    main()
