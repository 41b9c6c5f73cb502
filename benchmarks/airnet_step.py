"""Seconds per airnet training step on the CPU: the whitening bias trained or frozen, at 32 and 24 px.

Shows what the trainer's two step-time savings are worth apart: freezing the whitening bias once its
learning rate reached 0 (``freeze_finished_groups``), and keeping freed memory (``keep_freed_memory``;
run once with ``--release-memory`` to compare, since that setting is process-wide). ``--act silu``
times airnet with SiLU instead of GELU; the precision defaults to what ``--precision auto`` picks.

    python benchmarks/airnet_step.py && python benchmarks/airnet_step.py --release-memory
"""

from __future__ import annotations

import argparse
import resource
import time

import torch
import torch.nn.functional as F

from cifarlens.models import create_model
from cifarlens.training.device import autocast, cpu_name, keep_freed_memory, resolve_precision


def step_seconds(
    size: int, bias_trains: bool, batch: int, repeats: int, memory_format: torch.memory_format,
    precision: str, act: str,
) -> tuple[float, float]:
    """Best of ``repeats`` steps (forward, backward) at ``precision``; minor page faults per step."""
    torch.manual_seed(0)
    model = create_model("airnet", act=act).to(memory_format=memory_format)
    model.whiten.bias.requires_grad_(bias_trains)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=memory_format)
    y = torch.randint(0, 10, (batch,))

    def step() -> None:
        with autocast(torch.device("cpu"), precision):
            loss = F.cross_entropy(model(x).float(), y, label_smoothing=0.2)
        loss.backward()
        model.zero_grad(set_to_none=True)

    step()
    times, faults = [], resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return min(times), (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--release-memory", action="store_true", help="leave glibc returning freed memory to the OS")
    parser.add_argument("--contiguous", action="store_true", help="NCHW tensors instead of channels-last")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    parser.add_argument("--act", default="gelu", choices=("gelu", "silu"), help="airnet's activation")
    args = parser.parse_args()
    kept = not args.release_memory and keep_freed_memory()
    fmt = torch.contiguous_format if args.contiguous else torch.channels_last
    precision = resolve_precision(args.precision, torch.device("cpu"))
    print(f"{cpu_name()}, {torch.get_num_threads()} threads, batch {args.batch}, {fmt}, {precision}, act {args.act}, "
          f"freed memory kept: {kept}")
    print("| px | whitening bias | s/step | page faults/step | frozen / trained |")
    print("| ---: | --- | ---: | ---: | ---: |")
    for size in (32, 24):
        trained, trained_faults = step_seconds(size, True, args.batch, args.repeats, fmt, precision, args.act)
        frozen, frozen_faults = step_seconds(size, False, args.batch, args.repeats, fmt, precision, args.act)
        print(f"| {size} | trained | {trained:.2f} | {trained_faults:,.0f} | |")
        print(f"| {size} | frozen | {frozen:.2f} | {frozen_faults:,.0f} | {frozen / trained:.2f}x |")


if __name__ == "__main__":
    main()
