"""Measured peak of this machine: a large matmul and a conv training step, fp32 vs bf16 autocast.

The ratios decide ``--precision auto`` and ``--channels-last`` on CPU and give the peak
that training GFLOP/s is compared against. All variants run in one process, interleaved
over ``--repeats`` rounds, and the median is reported. Like the trainer, the process keeps freed
memory for reuse (``keep_freed_memory``); ``--release-memory`` measures glibc's default instead.

    python benchmarks/cpu_peak.py --repeats 5
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from datetime import date

import torch
from torch import nn

from cifarlens.deploy.bench import matmul_peak_gflops
from cifarlens.device import cpu_has_fast_bf16, cpu_name, keep_freed_memory


def timed(fn, warmup: int = 2, iters: int = 3) -> float:
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t0) / iters


def conv_step_gflops(precision: str, channels_last: bool, batch: int = 256) -> float:
    """One training step (forward + backward + SGD) of two 3x3 convs, 64->128->128 channels at 32x32."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(64, 128, 3, padding=1),
        nn.BatchNorm2d(128),
        nn.ReLU(),
        nn.Conv2d(128, 128, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(128, 10),
    )
    x = torch.randn(batch, 64, 32, 32)
    if channels_last:
        net, x = net.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = net(x).float().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    flops = 3 * 2 * batch * 32 * 32 * 9 * (64 * 128 + 128 * 128)  # forward + 2x for backward
    return flops / timed(copy.copy(step), iters=2) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds of each matmul measurement")
    parser.add_argument("--matmul-n", type=int, default=4096, help="size of the square matmul (smaller: short of peak)")
    parser.add_argument("--batch", type=int, default=256, help="images in the conv training step")
    parser.add_argument("--out", default="benchmarks/results/cpu_peak.json")
    parser.add_argument("--release-memory", action="store_true", help="leave glibc returning freed memory to the OS")
    args = parser.parse_args()
    kept = not args.release_memory and keep_freed_memory()
    variants = {
        "matmul fp32": lambda: matmul_peak_gflops(args.seconds, args.matmul_n, dtype=torch.float32),
        "matmul bf16": lambda: matmul_peak_gflops(args.seconds, args.matmul_n, dtype=torch.bfloat16),
        "conv step fp32 contiguous": lambda: conv_step_gflops("fp32", False, args.batch),
        "conv step fp32 channels_last": lambda: conv_step_gflops("fp32", True, args.batch),
        "conv step bf16 contiguous": lambda: conv_step_gflops("bf16", False, args.batch),
        "conv step bf16 channels_last": lambda: conv_step_gflops("bf16", True, args.batch),
    }
    samples: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.repeats):
        for name, fn in variants.items():
            samples[name].append(fn())
    result = {
        "date": str(date.today()),
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "native_bf16": cpu_has_fast_bf16(),
        "freed_memory_kept": kept,
        "gflops_median": {k: statistics.median(v) for k, v in samples.items()},
        "gflops_all": samples,
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    med = result["gflops_median"]
    print(
        f"{result['cpu']}, {result['threads']} threads, torch {result['torch']}, native bf16: {result['native_bf16']}, "
        f"freed memory kept: {kept}"
    )
    print("| kernel | GFLOP/s (median of %d) | vs fp32 |" % args.repeats)
    print("| --- | ---: | ---: |")
    base = {"matmul": med["matmul fp32"], "conv": med["conv step fp32 contiguous"]}
    for name, value in med.items():
        print(f"| {name} | {value:.0f} | {value / base[name.split()[0]]:.2f}x |")


if __name__ == "__main__":
    main()
