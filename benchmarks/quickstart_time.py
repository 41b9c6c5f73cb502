"""How long README's quickstart takes a new user: its own command, run as written, in a fresh clone.

The command is read from README.md's first code block under "## Quickstart" (so this benchmark runs what the
README says, and follows it when it changes), split at ``&&`` and run step by step in one bash shell, each
step timed: creating the venv, installing the project, and ``cifarlens train``. The train step is split with
the run's own clocks (summary.json): training steps (``train_s``), the per-epoch evaluations, the final
evaluation, and the rest (start-up, loading the data, JPEG copies, plots and report).

    python benchmarks/quickstart_time.py --out benchmarks/results/quickstart_<cpu>.json

The clone is made from this checkout's HEAD in a scratch folder beside which ``shared`` points at this
checkout's ``../shared``, so the README's relative data path resolves as it does for a user. ``--train-args``
appends options to the train command (the smoke test's tiny run); a figure for the README comes without them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def quickstart_command(readme: Path) -> str:
    """The first ```bash block under README's "## Quickstart" heading, as one line."""
    text = readme.read_text()
    section = text.split("## Quickstart", 1)
    block = re.search(r"```bash\n(.*?)```", section[1], re.S) if len(section) == 2 else None
    if block is None:
        raise SystemExit(f"error: no ```bash block under '## Quickstart' in {readme}; the benchmark runs that command")
    return " ".join(line.strip() for line in block.group(1).splitlines() if line.strip())


def is_train(step: str) -> bool:
    return " cifarlens train" in f" {step}"


def timed_steps(command: str, cwd: Path, env: dict[str, str], extra_train_args: list[str]) -> list[dict]:
    """Run each ``&&`` step of ``command`` in one bash process (so ``. .venv/bin/activate`` carries over),
    timing each with bash's own clock; the steps' output goes to this process's stdout."""
    steps = [s.strip() for s in command.split("&&")]
    if extra_train_args:
        steps = [s + " " + shlex.join(extra_train_args) if is_train(s) else s for s in steps]
    script = ["set -e", 't() { local s=$EPOCHREALTIME; eval "$1"; echo "STEP_T $s $EPOCHREALTIME"; }']
    script += [f"t {shlex.quote(s)}" for s in steps]
    proc = subprocess.run(
        ["bash", "-c", "\n".join(script)],
        cwd=cwd,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        check=False,
    )
    print(proc.stdout[-6000:], flush=True)
    seconds = [float(b) - float(a) for a, b in re.findall(r"^STEP_T ([0-9.]+) ([0-9.]+)$", proc.stdout, re.M)]
    if proc.returncode or len(seconds) != len(steps):
        raise SystemExit(
            f"error: step {len(seconds) + 1} of the quickstart failed (exit {proc.returncode}): "
            f"{steps[len(seconds)] if len(seconds) < len(steps) else steps[-1]}"
        )
    return [{"step": s, "seconds": sec} for s, sec in zip(steps, seconds)]


def train_parts(run: Path, train_wall: float) -> dict:
    """The train step's wall time split by the run's own clocks (summary.json)."""
    from cifarlens.run import RunDir

    summary = RunDir(run).read_summary()
    train = summary["train"]
    final_eval = sum(v.get("seconds", 0.0) for k, v in summary.items() if k != "train" and isinstance(v, dict))
    epochs_s = train["seconds"]  # every epoch, its per-epoch evaluation included
    return {
        "training_steps_s": train["train_s"],
        "per_epoch_evaluation_s": epochs_s - train["train_s"],
        "final_evaluation_s": final_eval,
        "startup_data_plots_report_s": train_wall - epochs_s - final_eval,
        "test_accuracy": {k: v["accuracy"] for k, v in summary.items() if isinstance(v, dict) and "accuracy" in v},
        "device": train["device"],
        "precision": train["precision"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON results file")
    parser.add_argument("--train-args", default="", help="options appended to the train command (smoke tests only)")
    parser.add_argument("--keep", type=Path, help="keep the clone (venv, run) here instead of a scratch folder")
    args = parser.parse_args()
    from cifarlens.device import cpu_fields

    command = quickstart_command(ROOT / "README.md")
    cpu = cpu_fields()
    scratch = Path(tempfile.mkdtemp(prefix="quickstart-")) if args.keep is None else args.keep
    clone = scratch / "cifarlens"
    shared = ROOT.parent / "shared"
    if not (shared / "data").is_dir():
        raise SystemExit(
            f"error: {shared}/data not found; the quickstart reads ../shared/data/cifar10 from the checkout"
        )
    try:
        scratch.mkdir(parents=True, exist_ok=True)
        (scratch / "shared").symlink_to(shared, target_is_directory=True)
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "CIFARLENS_DATA_DIR")}
        env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if ".venv" not in p)
        started = time.perf_counter()
        steps = timed_steps(command, clone, env, shlex.split(args.train_args))
        total = time.perf_counter() - started
        runs = sorted((clone / "runs").iterdir(), key=lambda p: p.stat().st_mtime)
        train_step = next(s for s in steps if is_train(s["step"]))
        result = {
            "command": command,
            "train_args_added": args.train_args,
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "cpu": {k: cpu.get(k) for k in ("model name", "cpu family", "model")}
            | {"avx512_bf16": "avx512_bf16" in cpu.get("flags", "")},
            "commit": subprocess.run(
                ["git", "-C", str(ROOT), "rev-parse", "HEAD"], text=True, capture_output=True, check=False
            ).stdout.strip(),
            "steps": steps,
            "total_s": total,
            "train": train_parts(runs[-1], train_step["seconds"]),
            "benchmark_command": "python benchmarks/quickstart_time.py " + shlex.join(sys.argv[1:]),
        }
    finally:
        if args.keep is None:
            shutil.rmtree(scratch, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for s in steps:
        print(f"{s['seconds']:8.1f} s  {s['step']}")
    print(f"{total:8.1f} s  in all; training steps {result['train']['training_steps_s']:.1f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
