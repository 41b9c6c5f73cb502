"""Time to accuracy: our fast recipes against airbench94 and common baselines, on this machine.

Every job is one ``cifarlens train`` command in a fresh process, exactly as a user runs it;
its wall time is measured around the whole process (start-up, data, JPEG copies,
compilation, training, final evaluation with TTA). From the run directory it reads:

* the final test accuracy (TTA when the recipe uses it);
* the seconds until the per-epoch test accuracy first reaches each ``--targets`` value and
  the reference recipe's mean accuracy (the bar our recipes must reach),
  counted on the run's training clock (``train_clock``: everything but the per-epoch
  evaluations, which only exist to draw the curve); the final TTA score counts at the
  time the run ends;
* training GFLOP/s (FLOPs counted by torch per image x images/s) and the share of the
  epoch spent in data, forward, backward and optimizer step.

Baselines train for the same wall budget as the first recipe: their epochs are set from
their measured speed (``--baseline-ips`` or a short timing run), at least one epoch.

``--val-size N`` holds out N pixel-exact training images in every run and reports their
accuracy too (the test set here is JPEG-recovered, see the data README); with
``--targets-on val`` the times and the reference's bar are taken on them.

Results accumulate in ``--out`` (JSON), one entry per (recipe, seed); rerunning skips the
finished ones, so a long benchmark can be spread over several sessions.

    python benchmarks/time_to_accuracy.py --recipes fast --seeds 0,1,2,3,4 \\
        --reference airbench94 --reference-seeds 0 --baselines resnet18,seed
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import torch

import cifarlens
from cifarlens.device import cpu_name
from cifarlens.run import RunDir

ROOT = Path(__file__).resolve().parent
DEFAULT_TARGETS = "0.80,0.853"


def run_job(recipe: str, seed: int, workdir: Path, extra: list[str], val_size: int = 0) -> dict:
    """Train ``recipe`` with ``seed`` in a fresh process; return what its run directory says.

    With ``val_size``, that many pixel-exact training images are held out and scored after the
    run (outside its wall time), with TTA when the recipe uses it.
    """
    out = workdir / f"{recipe}-s{seed}"
    if out.exists():
        shutil.rmtree(out)  # an unfinished run from an interrupted benchmark: start it again
    if val_size:
        extra = [*extra, "--val-size", str(val_size)]
    cmd = [
        sys.executable,
        "-m",
        "cifarlens.cli",
        "train",
        "--recipe",
        recipe,
        "--seed",
        str(seed),
        "--out",
        str(out),
        "--no-download",
        *extra,
    ]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    rows = RunDir(out).read_metrics()
    summary = json.loads((out / "summary.json").read_text())
    # The recipe's own final evaluation: mirror TTA, TTA with one-pixel shifts, or none.
    tta_key = next((k for k in ("test_tta_translate", "test_tta") if k in summary), None)
    if val_size:
        tta = {"test_tta_translate": ["--tta-translate"], "test_tta": ["--tta"], None: []}[tta_key]
        evaluate = [sys.executable, "-m", "cifarlens.cli", "evaluate", str(out), "--split", "val", *tta]
        proc = subprocess.run(evaluate, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(evaluate)} failed:\n{proc.stderr[-3000:]}")
        summary = json.loads((out / "summary.json").read_text())
    final = summary.get(tta_key or "test") or {}  # a --no-evaluate probe scores nothing
    val_key = tta_key.replace("test", "val") if tta_key else "val"
    config = (out / "config.yaml").read_text()
    return {
        "recipe": recipe,
        "seed": seed,
        "wall_s": wall,
        "test_acc": final.get("accuracy"),
        "tta": tta_key is not None,
        "tta_translate": tta_key == "test_tta_translate",
        "final_eval_s": final.get("seconds"),
        "curve": [(r["train_clock"], r["test_acc"]) for r in rows if r.get("test_acc") is not None],
        "val_size": val_size,
        "val_acc": summary[val_key]["accuracy"] if val_size else None,
        "val_curve": [(r["train_clock"], r["val_acc"]) for r in rows if r.get("val_acc") is not None],
        "epochs": len(rows),
        "images_per_s": statistics.mean(r["images_per_s"] for r in rows),
        "gflops": statistics.mean(r["gflops"] for r in rows),
        "phases": {k: sum(r.get(k, 0.0) for r in rows) for k in ("data_s", "forward_s", "backward_s", "step_s")},
        "config": config,
    }


def time_to(result: dict, target: float, split: str = "test") -> float | None:
    """Seconds on the training clock until ``split`` accuracy first reached ``target`` (None: never)."""
    curve, final = (
        (result["curve"], result["test_acc"]) if split == "test" else (result["val_curve"], result["val_acc"])
    )
    for clock, acc in curve:
        if acc >= target:
            return clock
    if final is not None and final >= target:
        return result["curve"][-1][0] + (result["final_eval_s"] or 0.0)
    return None


def summarize(results: list[dict], targets: list[float], split: str = "test") -> dict:
    accs = [r["test_acc"] for r in results]
    row = {
        "recipe": results[0]["recipe"],
        "seeds": [r["seed"] for r in results],
        "acc_mean": statistics.mean(accs),
        "acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
        "wall_s_mean": statistics.mean(r["wall_s"] for r in results),
        "gflops_mean": statistics.mean(r["gflops"] for r in results),
        "epochs": results[0]["epochs"],
    }
    vals = [r.get("val_acc") for r in results]
    if all(v is not None for v in vals):
        row["val_mean"] = statistics.mean(vals)
        row["val_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
    phases = {k: sum(r["phases"][k] for r in results) for k in results[0]["phases"]}
    total = sum(phases.values()) or 1.0
    row["phase_share"] = {k: v / total for k, v in phases.items()}
    for t in targets:
        times = [time_to(r, t, split) for r in results]
        row[f"time_to_{t}"] = statistics.mean(times) if all(x is not None for x in times) else None
    return row


def markdown(result: dict) -> str:
    targets = result["targets"]
    held_out = any("val_mean" in r for r in result["summary"])
    head = (
        "| recipe | epochs | seeds | test acc % (mean ± std) | "
        + ("held-out acc % | " if held_out else "")
        + "wall s | "
        + " | ".join(f"s to {100 * t:g}%" for t in targets)
        + " | GFLOP/s | data / fwd / bwd / step |"
    )
    lines = [
        f"Machine: {result['machine']}; torch {result['torch']}; cifarlens {result['cifarlens']}; {result['date']}",
        "",
        head,
        "| --- | ---: | ---: | ---: | "
        + ("---: | " if held_out else "")
        + "---: | "
        + " | ".join("---:" for _ in targets)
        + " | ---: | --- |",
    ]
    for r in result["summary"]:
        times = " | ".join("-" if r[f"time_to_{t}"] is None else f"{r[f'time_to_{t}']:.0f}" for t in targets)
        share = " / ".join(f"{100 * r['phase_share'][k]:.0f}%" for k in ("data_s", "forward_s", "backward_s", "step_s"))
        lines.append(
            f"| {r['recipe']} | {r['epochs']} | {len(r['seeds'])} | {100 * r['acc_mean']:.2f} "
            f"± {100 * r['acc_std']:.2f} "
            + (
                f"| {100 * r['val_mean']:.2f} ± {100 * r['val_std']:.2f} "
                if "val_mean" in r
                else "| - "
                if held_out
                else ""
            )
            + f"| {r['wall_s_mean']:.0f} | {times} | {r['gflops_mean']:.0f} | {share} |"
        )
    return "\n".join(lines)


def baseline_epochs(recipe: str, budget_s: float, workdir: Path, ips: float | None) -> int:
    """Whole epochs of ``recipe`` that fit ``budget_s`` at its measured speed (at least 1)."""
    if ips is None:
        probe = run_job(recipe, 0, workdir / "probe", ["--subset", "2000", "--epochs", "1", "--no-evaluate"])
        ips = probe["images_per_s"]
    return max(1, int(budget_s * ips / 50_000))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default="fast", help="our recipes, comma-separated")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--reference", default="airbench94", help="reference recipe ('' to skip)")
    parser.add_argument("--reference-seeds", default="0")
    parser.add_argument("--baselines", default="resnet18,seed", help="recipes trained for the first recipe's wall time")
    parser.add_argument("--baseline-ips", default="", help="known images/s per baseline, e.g. resnet18=41,seed=119")
    parser.add_argument(
        "--targets", default=DEFAULT_TARGETS, help="test accuracies to time, on this data dir's test set"
    )
    parser.add_argument(
        "--val-size",
        type=int,
        default=0,
        help="hold out N pixel-exact training images in every run and score them (the test set here is JPEG-recovered)",
    )
    parser.add_argument(
        "--train-args", default="", help="options added to every train command (e.g. a smoke test's tiny runs)"
    )
    parser.add_argument("--targets-on", choices=("test", "val"), default="test", help="which split --targets time")
    parser.add_argument("--workdir", default=str(ROOT / "runs"), help="where the run directories go")
    parser.add_argument("--out", default=str(ROOT / "results" / "time_to_accuracy.json"))
    args = parser.parse_args()
    if not os.environ.get("CIFARLENS_DATA_DIR"):
        raise SystemExit("set CIFARLENS_DATA_DIR to the folder holding cifar-10-batches-py")

    out, workdir = Path(args.out), Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    stored = json.loads(out.read_text()) if out.is_file() else {"runs": []}
    done = {(r["recipe"], r["seed"]) for r in stored["runs"]}
    if any(r.get("val_size", 0) != args.val_size for r in stored["runs"]):
        raise SystemExit(f"{out} holds runs with another --val-size; pass a new --out")
    if args.targets_on == "val" and not args.val_size:
        raise SystemExit("--targets-on val needs --val-size N")
    targets = [float(t) for t in args.targets.split(",")]

    def record(recipe: str, seeds: list[int], extra: list[str]) -> None:
        extra = [*shlex.split(args.train_args), *extra]
        for seed in seeds:
            if (recipe, seed) in done:
                continue
            result = run_job(recipe, seed, workdir, extra, args.val_size)
            stored["runs"].append(result)
            done.add((recipe, seed))
            out.write_text(json.dumps(stored, indent=1))
            print(json.dumps({k: result[k] for k in ("recipe", "seed", "wall_s", "test_acc", "gflops")}), flush=True)

    seeds = [int(s) for s in args.seeds.split(",")]
    recipes = [r for r in args.recipes.split(",") if r]
    # One seed of everything first, so an interrupted benchmark already has a whole comparison.
    record(recipes[0], seeds[:1], [])
    if args.reference:
        record(args.reference, [int(s) for s in args.reference_seeds.split(",")], [])
    budget = statistics.mean(r["wall_s"] for r in stored["runs"] if r["recipe"] == recipes[0])
    known_ips = dict(kv.split("=") for kv in args.baseline_ips.split(",") if kv)
    for recipe in [b for b in args.baselines.split(",") if b]:
        if (recipe, 0) not in done:
            ips = float(known_ips[recipe]) if recipe in known_ips else None
            epochs = baseline_epochs(recipe, budget, workdir, ips)
            record(recipe, [0], ["--epochs", str(epochs)])
    for recipe in recipes:
        record(recipe, seeds, [])

    by_recipe: dict[str, list[dict]] = {}
    for r in stored["runs"]:
        by_recipe.setdefault(r["recipe"], []).append(r)
    if args.reference in by_recipe:  # the bar of the issue: the reference recipe's own accuracy on this test set
        key = "val_acc" if args.targets_on == "val" else "test_acc"
        reference_acc = statistics.mean(r[key] for r in by_recipe[args.reference])
        targets = sorted(set(targets) | {round(reference_acc - 0.0005, 3)})
    stored |= {
        "date": str(date.today()),
        "machine": f"{cpu_name()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "cifarlens": cifarlens.__version__,
        "targets": targets,
        "targets_on": args.targets_on,
        "summary": [summarize(runs, targets, args.targets_on) for runs in by_recipe.values()],
    }
    out.write_text(json.dumps(stored, indent=1))
    print(markdown(stored))


if __name__ == "__main__":
    main()
