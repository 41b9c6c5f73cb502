"""Seconds per airnet training step on the CPU: the whitening bias trained or frozen, at 32 and 24 px.

Shows what the trainer's two step-time savings are worth apart: freezing the whitening bias once its
learning rate reached 0 (``freeze_finished_groups``), and keeping freed memory (``keep_freed_memory``;
run once with ``--release-memory`` to compare, since that setting is process-wide). ``--act silu``
times airnet with SiLU instead of GELU, ``--width 32 --wide 128`` at fast90's widths, and ``--compile``
through ``torch.compile`` (one static-shape graph per image size; compilation not timed). The precision
defaults to what ``--precision auto`` picks.

    python benchmarks/airnet_step.py && python benchmarks/airnet_step.py --release-memory
"""

from __future__ import annotations

import argparse
import resource
import time

import torch
import torch.nn.functional as F

from cifarlens.device import autocast, cpu_name, keep_freed_memory, resolve_precision
from cifarlens.models import create_model


def step_seconds(
    size: int,
    bias_trains: bool,
    batch: int,
    repeats: int,
    memory_format: torch.memory_format,
    precision: str,
    act: str,
    compiled: bool = False,
    widths: tuple[int, int] = (64, 256),
) -> tuple[float, float]:
    """Best of ``repeats`` steps (forward, backward) at ``precision``; minor page faults per step."""
    torch.manual_seed(0)
    model = create_model("airnet", act=act, width=widths[0], wide=widths[1]).to(memory_format=memory_format)
    model.whiten.bias.requires_grad_(bias_trains)
    forward = torch.compile(model, dynamic=False) if compiled else model
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=memory_format)
    y = torch.randint(0, 10, (batch,))

    def step() -> None:
        with autocast(torch.device("cpu"), precision):
            loss = F.cross_entropy(forward(x).float(), y, label_smoothing=0.2)
        loss.backward()
        model.zero_grad(set_to_none=True)

    step()
    step()  # a compiled step's first call compiles; its second settles the allocator
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
    parser.add_argument("--compile", action="store_true", help="run the step through torch.compile")
    parser.add_argument("--width", type=int, default=64, help="airnet's first block width")
    parser.add_argument("--wide", type=int, default=256, help="airnet's width in blocks 2 and 3")
    args = parser.parse_args()
    kept = not args.release_memory and keep_freed_memory()
    fmt = torch.contiguous_format if args.contiguous else torch.channels_last
    precision = resolve_precision(args.precision, torch.device("cpu"))
    print(
        f"{cpu_name()}, {torch.get_num_threads()} threads, batch {args.batch}, {fmt}, {precision}, act {args.act}, "
        f"widths {args.width}/{args.wide}/{args.wide}, "
        f"freed memory kept: {kept}, compiled: {args.compile}"
    )
    print("| px | whitening bias | s/step | page faults/step | frozen / trained |")
    print("| ---: | --- | ---: | ---: | ---: |")
    options = (args.batch, args.repeats, fmt, precision, args.act, args.compile, (args.width, args.wide))
    for size in (32, 24):
        trained, trained_faults = step_seconds(size, True, *options)
        frozen, frozen_faults = step_seconds(size, False, *options)
        print(f"| {size} | trained | {trained:.2f} | {trained_faults:,.0f} | |")
        print(f"| {size} | frozen | {frozen:.2f} | {frozen_faults:,.0f} | {frozen / trained:.2f}x |")


if __name__ == "__main__":
    main()
