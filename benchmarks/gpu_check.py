"""The training and inference part of ``benchmarks/gpu_check.sh``: runs, bench, one JSON and one markdown table.

On the packed subset (``benchmarks/gpu_data.py``: 20,000 training images, 5,000 held out), each as the
``cifarlens train`` command a user runs: ``fast`` with 5 seeds and ``airbench94`` with 2, scored on the held-out
images with their recipes' TTA; then ``fast``, ``fast --compile`` and ``airbench94`` once each on the training images
repeated to 50,000, to time full-size epochs; then ``cifarlens bench`` of the first ``fast`` run for eager,
compiled and onnxruntime. Training seconds are the trainer's own (``summary.json``: ``train_s``, CUDA events
on a GPU, compilation apart in ``compile_s``). ``--dry-run`` does the same on the CPU with a tiny packed subset,
fewer epochs and a narrow net, so that the script is tested where no GPU is.

A GPU is lent for minutes, so nothing measured is lost to a later step: the headline pair (``fast`` and
``airbench94``, seed 0, on the subset and at full size) runs first, the other seeds, ``--compile`` and bench
after it; gpu_check.json and gpu_check.md are rewritten after every step (``complete`` says whether all
ran); a step that fails is recorded with its error and the rest go on; a step that would not end within
``--budget-s`` of the check's start, by an estimate from the steps already done, is recorded as skipped. The
exit status is 1 when a step failed or was skipped. Outside ``--dry-run`` it stops at once without a CUDA GPU,
and a cuda test run in which no test passed is a failure.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import torch

from cifarlens.io import atomic_write_text

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_data import pack, unpack

SEEDS = {"fast": [0, 1, 2, 3, 4], "airbench94": [0, 1]}
TIMED = [("fast", []), ("airbench94", [])]
COMPILED = ("fast-compile", ["--recipe", "fast", "--compile"])  # timed at full size too, after every eager run
FULL_SIZE = 50_000
HIVERGE_A100_S = 2.0  # hiverge/cifar10-speedrun's published A100 record, the anchor
VERSIONS = ("torch", "torchvision", "numpy", "onnx", "onnxruntime", "onnxscript", "safetensors", "timm")
# The dry run: a few hundred images, 2 epochs, airnet at a sixteenth of its width.
DRY = {
    "train": 400,
    "held_out": 100,
    "full_size": 1000,
    "seeds": {"fast": [0, 1], "airbench94": [0]},
    "args": ["--device", "cpu", "--epochs", "2", "--model-args", "{width: 16, wide: 32}"],
    "recipe_args": {"fast": ["--early-epochs", "1"]},
}


def train(name: str, args: list[str], seed: int, data: Path, work: Path, extra: list[str]) -> dict:
    """One ``cifarlens train`` command, run in this process (its start-up is no part of any figure, and paying
    it once keeps the check short); what its summary.json says, with its wall time."""
    from cifarlens.cli import app

    out = work / "runs" / f"{name}-{data.name}-s{seed}"
    recipe_args = args if args else ["--recipe", name]
    # --eval-test-every-epoch: the held-out accuracy of every epoch, for the seconds to a given accuracy (the
    # per-epoch scoring is off the training clock, train_s).
    cmd = [
        "train",
        *recipe_args,
        "--seed",
        str(seed),
        "--data-dir",
        str(data),
        "--out",
        str(out),
        "--no-download",
        "--no-report",
        "--no-evaluate",
        "--eval-test-every-epoch",
        *extra,
    ]
    print("$ cifarlens", " ".join(cmd), flush=True)
    start = time.perf_counter()
    code = app(cmd, standalone_mode=False)
    wall = time.perf_counter() - start
    if code:
        raise SystemExit(f"error: {name} seed {seed} failed (exit {code}); its output is above")
    summary = json.loads((out / "summary.json").read_text())["train"]
    acc, views = held_out_accuracy(out, summary["device"])
    return {
        "recipe": name,
        "seed": seed,
        "images": data.name,
        "run": str(out),
        "held_out_acc": acc,
        "tta": views,
        "train_s": summary["train_s"],
        "compile_s": summary["compile_s"],
        "wall_s": wall,
        "device": summary["device"],
        "precision": summary["precision"],
        "epochs": epoch_curve(out),
    }


def epoch_curve(run: Path) -> list[dict]:
    """Per epoch: the training clock so far (seconds, evaluations excluded) and the held-out accuracy without
    TTA, from the run's metrics.csv (the held-out images are the packed data's test split)."""
    from cifarlens.run import RunDir

    return [
        {"epoch": row["epoch"], "train_clock_s": row["train_clock"], "held_out_acc": row.get("test_acc")}
        for row in RunDir(run).read_metrics()
    ]


def held_out_accuracy(run: Path, device: str) -> tuple[float, str]:
    """Accuracy on the run's test split, the held-out images, with its recipe's TTA, as its final evaluation
    scores it (fp32), without the plots that evaluation draws; and which TTA that was."""
    from cifarlens.run import RunDir
    from cifarlens.run.predictor import Predictor

    run = RunDir(run)
    tta, translate = run.config["tta"], run.config["tta_translate"]
    model, spec = run.load_model(device)
    test = run.load_data().test
    logits = Predictor(model, spec, device=device, tta=tta, tta_translate=translate).logits(test.images)
    return float(
        (logits.argmax(1) == test.labels).float().mean()
    ), "mirror + shifts" if translate else "mirror" if tta else "none"


BENCH_BACKENDS = "torch,torch-compile,onnxruntime"


# cifarlens bench's options: the dry run's, and the GPU's.
BENCH = {
    True: {"seconds": 0.2, "test-images": 100, "batch-sizes": "1,32", "device": "cpu"},
    False: {"seconds": 1, "test-images": 5000, "batch-sizes": "1,256,2000", "device": "cuda"},
}


def bench_seconds(options: dict) -> float:
    """The seconds ``cifarlens bench`` spends measuring: per backend, ``seconds`` for accuracy and latency and
    ``seconds`` per batch size for throughput."""
    return len(BENCH_BACKENDS.split(",")) * options["seconds"] * (1 + len(options["batch-sizes"].split(",")))


def bench(run: str, work: Path, options: dict) -> dict:
    out = work / "bench.json"
    cmd = [
        sys.executable,
        "-m",
        "cifarlens.cli",
        "bench",
        run,
        "--backends",
        BENCH_BACKENDS,
        "--out",
        str(out),
        *(arg for name, value in options.items() for arg in (f"--{name}", str(value))),
    ]
    print("$", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, check=False, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    print(proc.stdout[-4000:], flush=True)
    if proc.returncode:
        raise SystemExit(f"error: cifarlens bench failed (exit {proc.returncode}); its output is above")
    return json.loads(out.read_text())


def spread(values: list[float]) -> dict:
    return {
        "mean": statistics.mean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "n": len(values),
    }


def seconds_to_accuracy(runs: list[dict], recipe: str, target: float | None) -> float | None:
    """Mean over ``recipe``'s runs of the training clock at the first epoch whose held-out accuracy (no TTA)
    reaches ``target``; None when a run never reaches it or there is no target."""
    if target is None:
        return None
    reached = []
    for run in (r for r in runs if r["recipe"] == recipe):
        hit = next((e["train_clock_s"] for e in run.get("epochs", []) if (e["held_out_acc"] or 0) >= target), None)
        if hit is None:
            return None
        reached.append(hit)
    return statistics.mean(reached) if reached else None


def final_epoch_accuracy(runs: list[dict], recipe: str) -> float | None:
    """Mean held-out accuracy (no TTA) of ``recipe``'s runs at their last epoch."""
    last = [r["epochs"][-1]["held_out_acc"] for r in runs if r["recipe"] == recipe and r.get("epochs")]
    return statistics.mean(last) if last and None not in last else None


def summarize(runs: list[dict], timed: list[dict]) -> dict:
    """Mean ± std per recipe of what has run so far; a comparison whose runs are missing is None."""
    accuracy = {
        r: spread([x["held_out_acc"] for x in runs if x["recipe"] == r])
        for r in SEEDS
        if any(x["recipe"] == r for x in runs)
    }
    subset_s = {r: spread([x["train_s"] for x in runs if x["recipe"] == r]) for r in accuracy}
    full = {x["recipe"]: x for x in timed}
    both_full, both_acc = {"fast", "airbench94"} <= full.keys(), {"fast", "airbench94"} <= accuracy.keys()
    ratio = full["fast"]["train_s"] / full["airbench94"]["train_s"] if both_full else None
    return {
        "held_out_acc": accuracy,
        "train_s_subset": subset_s,
        "train_s_full_size": {name: x["train_s"] for name, x in full.items()},
        "compile_s_full_size": {name: x["compile_s"] for name, x in full.items()},
        "fast_vs_airbench94_time": ratio,
        "fast_minus_airbench94_acc": accuracy["fast"]["mean"] - accuracy["airbench94"]["mean"] if both_acc else None,
        # Both without TTA, on the subset runs' per-epoch curves: when fast first reaches airbench94's final accuracy.
        "airbench94_final_epoch_acc": (target := final_epoch_accuracy(runs, "airbench94")),
        "fast_s_to_airbench94_acc": seconds_to_accuracy(runs, "fast", target),
        "goal_time_ratio_at_most_1": ratio <= 1.0 if both_full else None,
        "goal_within_2x_of_hiverge_a100": full["fast"]["train_s"] <= 2 * HIVERGE_A100_S if "fast" in full else None,
    }


def machine() -> dict:
    info = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": versions(),
    }
    try:
        import onnxruntime

        info["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except ImportError:
        info["onnxruntime_providers"] = []
    if torch.cuda.is_available():
        info |= {"gpu": torch.cuda.get_device_name(), "cuda": torch.version.cuda, "driver": _driver()}
    return info


def versions() -> dict[str, str | None]:
    """The installed version of each package the check's numbers depend on (None: not installed)."""
    found = {}
    for name in VERSIONS:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def _driver() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            check=False,
            text=True,
            capture_output=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip() or None


def pytest_counts(path: Path) -> dict:
    """passed/skipped/failed counts from the last line of ``pytest -q`` output."""
    text = path.read_text() if path.is_file() else ""
    return {word: int(n) for n, word in re.findall(r"(\d+) (passed|skipped|failed|errors?|deselected)", text)}


def markdown(result: dict) -> str:
    s, m = result["summary"], result["machine"]
    where = (
        f"{m.get('gpu', 'CPU (dry run)')}, driver {m.get('driver', '-')}, CUDA {m.get('cuda', '-')}, torch {m['torch']}"
    )
    where += "; " + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v and k != "torch")
    where += f"; onnxruntime providers: {', '.join(m['onnxruntime_providers']) or 'none'}"
    state = (
        "complete"
        if result["complete"]
        else "INCOMPLETE: "
        + "; ".join(
            [f"failed {x['step']}: {x['error']}" for x in result["failed"]]
            + [f"skipped {x}" for x in result["skipped"]]
            + (["still running"] if not result["failed"] and not result["skipped"] else [])
        )
    )
    lines = [
        f"# gpu_check {'(dry run) ' if result['dry_run'] else ''}{m['date']}",
        "",
        where,
        "",
        state,
        "",
        f"cuda tests: {result['pytest']}",
        "",
        f"Held-out accuracy with TTA ({result['subset']['train']} training "
        f"images, {result['subset']['held_out']} held out):",
        "",
        "| recipe | seeds | held-out acc % | training s (subset) |",
        "| --- | ---: | ---: | ---: |",
    ]
    for recipe, acc in s["held_out_acc"].items():
        t = s["train_s_subset"][recipe]
        lines.append(
            f"| {recipe} | {acc['n']} | {100 * acc['mean']:.2f} ± {100 * acc['std']:.2f} | "
            f"{t['mean']:.2f} ± {t['std']:.2f} |"
        )
    lines += [
        "",
        f"Full-size epochs ({result['subset']['full_size']} images an epoch, seed 0):",
        "",
        "| run | training s | compile s (apart) |",
        "| --- | ---: | ---: |",
    ]
    for name, secs in s["train_s_full_size"].items():
        lines.append(f"| {name} | {secs:.2f} | {s['compile_s_full_size'][name]:.1f} |")
    ratio, gain = s["fast_vs_airbench94_time"], s["fast_minus_airbench94_acc"]
    target, reach = s["airbench94_final_epoch_acc"], s["fast_s_to_airbench94_acc"]
    lines += [
        "",
        (
            f"fast / airbench94 training time: {'-' if ratio is None else f'{ratio:.2f}x'}; fast minus "
            f"airbench94 held-out accuracy: {'-' if gain is None else f'{100 * gain:+.2f} points'}"
        ),
        "",
        (
            f"Seconds of training for fast to reach airbench94's final held-out accuracy "
            f"({'-' if target is None else f'{100 * target:.2f}%'}, both without TTA, subset runs): "
            f"{'not reached' if reach is None else f'{reach:.2f} s'}"
        ),
        "",
    ]
    if result["bench"] is None:
        return "\n".join(lines + ["cifarlens bench: not run"]) + "\n"
    lines += [
        "| backend | runs on | accuracy % | p50 ms (b=1) | img/s at largest batch |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for r in result["bench"]["results"]:
        big = max(r["throughput"], key=int)
        lines.append(
            f"| {r['backend']} | {r['runs_on']} | {r['accuracy']:.2f} | {r['latency_p50_ms']:.2f} | "
            f"{r['throughput'][big]:,.0f} |"
        )
    return "\n".join(lines) + "\n"


@dataclass
class Check:
    """The check's result as it grows: every finished step is kept in ``result`` and written to ``out`` at once."""

    out: Path
    budget_s: float
    started: float
    result: dict = field(default_factory=dict)

    def step(self, name: str, guess_s: float, keep, fn, *args) -> None:
        """Run one step and hand its value to ``keep`` (which puts it into ``result``) before writing, so the
        files never lag a finished step. A step that would not end within the budget (``guess_s``, estimated
        from the steps done so far) is skipped; an error is recorded instead of stopping the check."""
        elapsed = time.time() - self.started
        if elapsed + guess_s > self.budget_s:
            print(
                f"skipped {name}: {elapsed:.0f} s gone + about {guess_s:.0f} "
                f"s for it > the {self.budget_s:.0f} s budget",
                flush=True,
            )
            self.result["skipped"].append(name)
            self.write()
            return
        began = time.time()
        try:
            keep(fn(*args))
        except (Exception, SystemExit) as err:  # noqa: BLE001 - one failed run must not cost the others' numbers
            traceback.print_exc()
            self.result["failed"].append({"step": name, "error": f"{type(err).__name__}: {err}"[:500]})
        finally:
            self.result["step_s"][name] = time.time() - began
            self.write()

    def write(self) -> None:
        r = self.result
        r["summary"] = summarize(r["runs"], r["timed"])
        atomic_write_text(self.out / "gpu_check.json", json.dumps(r, indent=2) + "\n")
        atomic_write_text(self.out / "gpu_check.md", markdown(r))


def estimate_s(step_s: dict[str, float], kinds: dict[str, str], kind: str, allowance_s: float) -> float:
    """Seconds a step of ``kind`` should take, from the steps done so far (``step_s``: name -> seconds,
    ``kinds``: name -> kind): the longest of the same kind; for the compiled run, the eager one plus
    ``allowance_s`` for compiling; 0 where nothing like it has run (it starts if the budget is not spent)."""
    like = [step_s[n] for n, k in kinds.items() if k == kind and n in step_s]
    if like:
        return max(like)
    if kind == f"full {COMPILED[0]}":
        return estimate_s(step_s, kinds, f"full {TIMED[0][0]}", allowance_s) + allowance_s
    return 0.0


def plan(seeds: dict[str, list[int]]) -> list[tuple[str, str, list[str], int]]:
    """(split, name, train args, seed) of every run, in the order they go: seed 0 of both recipes on the
    subset and at full size first, so that a check cut short still has the comparison."""
    head = [("subset", r, [], seeds[r][0]) for r in seeds]
    full = [("full", name, args, 0) for name, args in TIMED]
    rest = [("subset", r, [], s) for r in seeds for s in seeds[r][1:]]
    return head + full + rest + [("full", *COMPILED, 0)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="scratch folder for data and runs")
    parser.add_argument("--out", type=Path, required=True, help="where gpu_check.json and gpu_check.md go")
    parser.add_argument("--packed", type=Path, default=Path("gpu_data"), help="the packed subset (gpu_data.py pack)")
    parser.add_argument("--pytest-log", type=Path, help="output of the cuda tests, for their counts")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny subset packed here from $CIFARLENS_DATA_DIR")
    parser.add_argument(
        "--budget-s", type=float, default=450.0, help="seconds after --started by which every step ends"
    )
    parser.add_argument(
        "--compile-allowance-s",
        type=float,
        default=120.0,
        help="seconds added to the estimate of a step that compiles (not measured before it runs)",
    )
    parser.add_argument("--started", type=float, default=time.time(), help="when the check began (Unix seconds)")
    args = parser.parse_args()
    seeds, extra, full_size = (DRY["seeds"], DRY["args"], DRY["full_size"]) if args.dry_run else (SEEDS, [], FULL_SIZE)
    packed = args.packed
    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("error: no CUDA GPU visible to this python's torch; run on the GPU machine, or pass --dry-run")
    if args.dry_run:
        packed = args.work / "packed"
        pack(None, packed, DRY["train"], DRY["held_out"], seed=0, method=0)
    elif not (packed / "subset.json").is_file():
        raise SystemExit(f"error: no packed subset in {packed}; run python benchmarks/gpu_data.py pack, carry gpu_data")
    data = {
        "subset": unpack(packed, args.work / "subset"),
        "full": unpack(packed, args.work / f"full{full_size}", repeat_to=full_size),
    }
    index = json.loads((packed / "subset.json").read_text())
    check = Check(args.out, args.budget_s, args.started)
    counts = pytest_counts(args.pytest_log) if args.pytest_log else {}
    check.result = {
        "dry_run": args.dry_run,
        "complete": False,
        "machine": machine(),
        "subset": {"train": index["train"]["n"], "held_out": index["held_out"]["n"], "full_size": full_size},
        "pytest": counts,
        "failed": [],
        "skipped": [],
        "step_s": {},
        "runs": [],
        "timed": [],
        "bench": None,
    }
    if args.pytest_log and not args.dry_run and not counts.get("passed"):
        check.result["failed"].append({"step": "cuda tests", "error": f"no cuda test passed ({counts or 'no counts'})"})
    check.write()
    recipe_args = DRY["recipe_args"] if args.dry_run else {}
    # Under TORCHDYNAMO_DISABLE (the dry run) nothing compiles, so nothing is allowed for it.
    allowance_s = 0.0 if os.environ.get("TORCHDYNAMO_DISABLE") == "1" else args.compile_allowance_s
    kinds = {}
    for split, name, train_args, seed in plan(seeds):
        more = extra + recipe_args.get(train_args[1] if train_args else name, [])
        step, kinds[step] = f"{name} seed {seed} ({split})", f"{split} {name}"
        into = check.result["runs" if split == "subset" else "timed"]
        guess = estimate_s(check.result["step_s"], kinds, kinds[step], allowance_s)
        check.step(step, guess, into.append, train, name, train_args, seed, data[split], args.work, more)
    first = next((r["run"] for r in check.result["runs"] if r["recipe"] == "fast"), None)
    if first is None:
        check.result["skipped"].append("cifarlens bench (no fast run to bench)")
    else:
        options = BENCH[args.dry_run]
        guess = bench_seconds(options) + allowance_s  # its torch-compile backend compiles
        check.step("cifarlens bench", guess, lambda b: check.result.update(bench=b), bench, first, args.work, options)
    check.result["complete"] = not check.result["failed"] and not check.result["skipped"]
    check.write()
    print(markdown(check.result))
    print(f"wrote {args.out / 'gpu_check.json'} and {args.out / 'gpu_check.md'}")
    if not check.result["complete"]:
        raise SystemExit(
            "error: the check is incomplete (failed or skipped steps above); what ran is in gpu_check.json"
        )


if __name__ == "__main__":
    main()
