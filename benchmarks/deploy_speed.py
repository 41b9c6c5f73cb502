"""Inference speed per backend for the fast model (airnet) and resnet18, side by side in one run.

For each model: the run is trained if its folder does not exist yet (``cifarlens train``), exported
and verified (``cifarlens export --quantize int8``, which refuses an int8 graph that loses more
than 0.5 accuracy points), then measured with ``cifarlens bench``: the same test images, the same
thread count, accuracy on the test set next to latency and throughput. The table compares every
backend with PyTorch eager fp32 and checks the goal: some backend at least 3x its images/s at the
largest batch, accuracy within 0.5 points.

    python benchmarks/deploy_speed.py                       # full: fast recipe + resnet18 (1 epoch)
    python benchmarks/deploy_speed.py --fast-run runs/fast --resnet18-run runs/r18   # existing runs
    python benchmarks/deploy_speed.py --quick               # a minute or two: check the pipeline works
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

from cifarlens.device import cpu_name

RESULTS = Path(__file__).resolve().parent / "results"


def cifarlens(*args: object) -> None:
    cmd = [sys.executable, "-m", "cifarlens.cli", *map(str, args)]
    print("$", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True)


def ensure_run(path: Path, recipe: str, train_args: list[str]) -> None:
    if (path / "model.safetensors").is_file():
        return
    if (path / "checkpoint").is_dir():
        cifarlens("train", "--resume", path)
    else:
        cifarlens("train", "--recipe", recipe, "--out", path, *train_args)


def markdown(reports: dict[str, dict]) -> str:
    """One table: a row per (model, backend), speed-up against torch eager at the largest batch."""
    first = next(iter(reports.values()))
    sizes = list(first["results"][0]["throughput"])
    big = sizes[-1] if sizes else None
    lines = [
        "| model | backend | accuracy | p50 ms (b=1) | p99 ms (b=1) | "
        + " | ".join(f"img/s b={s}" for s in sizes)
        + f" | vs torch (b={big}) | GFLOP/s | x fp32 matmul |",
        "| --- | --- | ---: | ---: | ---: | " + " | ".join("---:" for _ in sizes) + " | ---: | ---: | ---: |",
    ]
    goals = []
    for name, report in reports.items():
        rows = {r["backend"]: r for r in report["results"]}
        ref = rows.get("torch")
        for r in report["results"]:
            speedup = r["throughput"][big] / ref["throughput"][big] if ref else float("nan")
            lines.append(
                f"| {name} | {r['backend']} | {r['accuracy']:.2f}% | {r['latency_p50_ms']:.2f} | "
                f"{r['latency_p99_ms']:.2f} | "
                + " | ".join(f"{r['throughput'][s]:,.0f}" for s in sizes)
                + f" | {speedup:.2f}x | {r['gflops']:.1f} | {r['vs_fp32_matmul']:.2f}x |"
            )
        if ref:
            goals.append(goal_line(name, ref, [r for r in report["results"] if r is not ref], big))
    return "\n".join(lines + [""] + goals)


def goal_line(name: str, ref: dict, others: list[dict], big: str) -> str:
    """The goal: some backend at least 3x torch eager fp32's images/s at the largest batch, within 0.5 points."""
    good = [r for r in others if ref["accuracy"] - r["accuracy"] <= 0.5]
    if not good:
        return f"- {name}: no backend within 0.5 points of torch eager: goal NOT met"
    best = max(good, key=lambda r: r["throughput"][big])
    speedup = best["throughput"][big] / ref["throughput"][big]
    verdict = "met" if speedup >= 3 else "NOT met"
    return (
        f"- {name}: fastest within 0.5 points is {best['backend']}, {speedup:.2f}x torch eager images/s at batch "
        f"{big}, accuracy {best['accuracy'] - ref['accuracy']:+.2f} points: goal (>= 3x) {verdict}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fast-run", type=Path, default=RESULTS / "deploy_runs" / "fast")
    parser.add_argument("--resnet18-run", type=Path, default=RESULTS / "deploy_runs" / "resnet18")
    parser.add_argument("--resnet18-epochs", type=int, default=1, help="epochs when resnet18 must be trained")
    parser.add_argument("--batch-sizes", default="1,32,256")
    parser.add_argument("--backends", default="auto", help="auto: every backend this machine has (cifarlens bench)")
    parser.add_argument("--threads", type=int, default=0, help="0: torch's default (all cores)")
    parser.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    parser.add_argument("--test-images", type=int, default=0, help="0: the whole test split")
    parser.add_argument("--out", type=Path, default=RESULTS / "deploy_speed.json")
    parser.add_argument("--max-int8-drop", type=float, default=0.5, help="export --max-int8-drop (accuracy points)")
    parser.add_argument("--quick", action="store_true", help="tiny runs and short measurements (a pipeline check)")
    args = parser.parse_args()

    fast_train: list[str] = []
    r18_train = ["--epochs", str(args.resnet18_epochs)]
    if args.quick:
        quick = RESULTS / "deploy_quick"
        args.fast_run, args.resnet18_run = quick / "fast", quick / "resnet18"
        fast_train = ["--subset", "2000", "--epochs", "2", "--no-compile"]
        r18_train = ["--subset", "500", "--epochs", "1"]
        args.batch_sizes, args.seconds, args.test_images = "1,64", 0.3, 500
        args.backends = "torch,onnxruntime,onnxruntime-int8"
        args.out = quick / "deploy_speed.json"
    started = time.perf_counter()
    reports = {}
    for name, path, recipe, train_args in (
        ("fast (airnet)", args.fast_run, "fast", fast_train),
        ("resnet18", args.resnet18_run, "resnet18", r18_train),
    ):
        ensure_run(path, recipe, train_args)
        export = ["export", path, "--quantize", "int8", "--max-int8-drop", args.max_int8_drop]
        if args.test_images:
            export += ["--test-images", args.test_images]
        cifarlens(*export)
        bench_json = path / "export" / "bench.json"
        cifarlens(
            "bench",
            path,
            "--batch-sizes",
            args.batch_sizes,
            "--backends",
            args.backends,
            "--threads",
            args.threads,
            "--seconds",
            args.seconds,
            "--test-images",
            args.test_images,
            "--out",
            bench_json,
        )
        reports[name] = json.loads(bench_json.read_text())
    table = markdown(reports)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "date": str(date.today()),
                "cpu": cpu_name(),
                "seconds": time.perf_counter() - started,
                "reports": reports,
            },
            indent=2,
        )
    )
    print(table)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
