"""The device and the autocast precision, for training and inference alike."""

from __future__ import annotations

import contextlib
import ctypes
import platform
from pathlib import Path

import torch

from cifarlens.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda, then mps, then cpu; an unavailable device is a ``ConfigError``."""
    mps = getattr(torch.backends, "mps", None)
    mps_ok = bool(mps and mps.is_available())
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps_ok else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for but no CUDA GPU is visible; use --device cpu or auto")
    if name == "mps" and not mps_ok:
        raise ConfigError("--device mps asked for but MPS is not available; use --device cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError:  # torch's message lists twenty device types cifarlens does not run on
        raise ConfigError(f"unknown device {name!r}; use --device auto, cpu, cuda or mps") from None


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux
        return ""


def cpu_has_fast_bf16() -> bool:
    """True when the CPU has native bf16 dot products (AVX512-BF16 or AMX), where bf16 autocast pays."""
    flags = _cpuinfo()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_fields() -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo (``model name``, ``cpu family``, ``model``, ``flags`` ...);
    empty off Linux."""
    lines = _cpuinfo().split("\n\n")[0].splitlines()
    return {key.strip(): value.strip() for key, value in (line.split(":", 1) for line in lines if ":" in line)}


def cpu_name() -> str:
    """The CPU model (``AMD EPYC ...``); ``platform.processor()`` is empty on Linux."""
    return cpu_fields().get("model name") or platform.processor() or platform.machine()


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto`` -> bf16 on CUDA with bf16 support and on CPUs with native bf16, else fp32."""
    if name == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if device.type == "cpu":
            return "bf16" if cpu_has_fast_bf16() else "fp32"
        return "fp32"
    if name == "fp16" and device.type == "cpu":
        raise ConfigError("--precision fp16 is not supported on CPU; use bf16 or fp32")
    return name


PRECISIONS = ("fp32", "bf16", "fp16")


def autocast(device: torch.device | str, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context for a resolved ``precision`` on ``device`` (a no-op for fp32).

    bf16 runs on CPU and CUDA, fp16 on CUDA only; anything else is a ``ConfigError``.
    """
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16" and device.type in ("cpu", "cuda"):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if precision == "fp16" and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    raise ConfigError(f"precision {precision} is not supported on {device.type}; use fp32")


# mallopt(3) parameters of glibc.
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def keep_freed_memory() -> bool:
    """Make the C allocator keep freed memory for reuse instead of returning it to the OS, process-wide.

    Returns whether it took effect (glibc only: Linux; macOS and musl keep their default).
    Why by hand: glibc serves every block over 32 MB with an ``mmap`` of its own and unmaps it on free,
    so each training step page-faults its activations in afresh. PyTorch has no caching allocator for
    CPU memory, and jemalloc or tcmalloc work only through ``LD_PRELOAD`` before the process starts. Two
    documented glibc knobs do it: no ``mmap`` for large blocks (they come from the heap, which is
    reused) and no trimming of the heap. Faults, step time and the peak-memory cost: BENCHMARKS.md,
    "Faster CPU steps: keeping freed memory".
    """
    if platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    return mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, -1) == 1


def configure_cpu(device: torch.device, threads: int, keep_memory: bool) -> None:
    """Apply a training config's CPU options: torch's thread count (0: leave it) and, when training on
    the CPU, ``keep_freed_memory``."""
    if threads:
        torch.set_num_threads(threads)
    if keep_memory and device.type == "cpu":
        keep_freed_memory()
