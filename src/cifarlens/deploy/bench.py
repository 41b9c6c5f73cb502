"""``cifarlens bench``: latency and throughput of each inference backend on this CPU, with accuracy.

Every backend gets the same uint8 test images (N, 3, 32, 32), the same thread count, and the
same work (preprocessing included, it is inside every backend). For each backend:

* accuracy on the test images, so speed is never bought with silent accuracy loss;
* latency at batch 1: p50 and p99 over single calls;
* throughput (images/s) at each batch size, measured round-robin over all backends (``rounds``) so that a
  slow spell of a shared CPU hits every backend alike, and the median ratio to PyTorch eager over rounds;
* GFLOP/s achieved (the fp32 model's FLOPs per image x images/s) as a multiple of a large fp32 matmul's
  GFLOP/s on the same threads. That matmul is a practical yardstick, not the hardware's peak: tuned
  fp32 conv kernels can pass it, and bf16 and int8 backends do more work per cycle, so ratios above 1x
  are expected and say how far a backend goes past plain fp32 PyTorch arithmetic.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cifarlens.deploy.onnx_export import export_run, load_eval_images
from cifarlens.deploy.openvino_runtime import import_openvino
from cifarlens.deploy.runtime import (
    TORCH_BACKENDS,
    Classifier,
    default_onnx_path,
    exported_graph,
    graph_backend,
    load_torch,
    torch_backend,
)
from cifarlens.device import cpu_has_fast_bf16, resolve_device
from cifarlens.errors import ConfigError
from cifarlens.run import ModelSpec, machine_provenance


def available_backends(device: str = "cpu") -> list[str]:
    """What ``--backends auto`` measures: every backend this machine runs at full speed. bf16 only where the
    CPU has it natively (elsewhere it is emulated, slower than fp32); OpenVINO when it is installed and on the CPU."""
    import importlib.util

    names = ["torch", "torch-compile"]
    if device == "cuda" or cpu_has_fast_bf16():
        names.append("torch-bf16")
    names += ["onnxruntime", "onnxruntime-int8"]
    if device == "cpu" and importlib.util.find_spec("openvino") is not None:
        names += ["openvino"] + (["openvino-bf16"] if cpu_has_fast_bf16() else []) + ["openvino-int8"]
    return names


@dataclass
class BackendResult:
    backend: str
    runs_on: str  # what executed it: torch's device, onnxruntime's execution provider, OpenVINO's plugin
    accuracy: float  # % on the test images
    latency_p50_ms: float  # batch 1
    latency_p99_ms: float
    throughput: dict[int, float]  # batch size -> images/s, median over rounds
    throughput_rounds: dict[int, list[float]]  # batch size -> images/s in each round
    reference: str  # the backend vs_reference compares with
    vs_reference: float  # median over rounds of throughput / reference's in the same round, largest batch
    gflops: float  # at the largest batch size
    vs_fp32_matmul: float  # gflops / a large fp32 torch.mm's GFLOP/s on the same threads

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {
            "throughput": {str(k): v for k, v in self.throughput.items()},
            "throughput_rounds": {str(k): v for k, v in self.throughput_rounds.items()},
        }


def timed_calls(fn: Callable[[], Any], seconds: float, min_calls: int = 5, max_calls: int = 100_000) -> list[float]:
    """Seconds per call of ``fn``, called until ``seconds`` have passed (at least ``min_calls`` times)."""
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < max_calls and (len(times) < min_calls or time.perf_counter() < deadline):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def model_flops(model: torch.nn.Module, spec: ModelSpec) -> int:
    """FLOPs of one forward pass of the fp32 model on one CIFAR image fed as ``spec`` says (torch's FLOP
    counter: 2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    image = spec.inputs(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(image)
    return int(counter.get_total_flops())


def matmul_peak_gflops(
    seconds: float = 2.0, n: int = 4096, dtype: torch.dtype = torch.float32, device: str = "cpu"
) -> float:
    """Best matmul GFLOP/s on the current torch threads (or on the GPU ``device`` names): the practical peak.

    ``n`` = 4096: a smaller product is too short to reach the steady clock on 2 cores
    (BENCHMARKS.md, "Machine peak and precision on this CPU"; benchmarks/cpu_peak.py measures the same).
    """
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)

    def product() -> None:
        torch.mm(a, b)
        if a.is_cuda:  # kernels run asynchronously: time the product, not its launch
            torch.cuda.synchronize(a.device)

    product()
    best = min(timed_calls(product, seconds, min_calls=3))
    return 2 * n**3 / best / 1e9


def accuracy_percent(classifier: Classifier, images: np.ndarray, labels: np.ndarray, batch_size: int = 256) -> float:
    """% correct on images (N, 3, 32, 32) uint8 with labels (N,)."""
    return float((classifier.logits(images, batch_size).argmax(1) == labels).mean() * 100)


def accuracy_and_latency(
    classifier: Classifier, images: np.ndarray, labels: np.ndarray, *, batch_size: int, seconds: float
) -> tuple[float, np.ndarray]:
    """% correct on images (N, 3, 32, 32) uint8 with labels (N,), and milliseconds per single-image call."""
    accuracy = accuracy_percent(classifier, images, labels, batch_size)
    one = batch_of(images, 1)
    for _ in range(3):  # warm-up: first calls allocate, compile or tune kernels
        classifier.run(one)
    return accuracy, np.array(timed_calls(lambda: classifier.run(one), seconds, min_calls=20)) * 1000


def batch_of(images: np.ndarray, size: int) -> np.ndarray:
    """The first ``size`` images, repeated when there are fewer, as one contiguous batch."""
    reps = -(-size // len(images))
    return np.ascontiguousarray(np.concatenate([images] * reps)[:size])


def throughput_rounds(
    classifiers: dict[str, Classifier], images: np.ndarray, *, batch_sizes: list[int], seconds: float, rounds: int
) -> dict[str, dict[int, list[float]]]:
    """images/s of every classifier at every batch size, measured in ``rounds`` turns in the same order
    (``seconds / rounds`` each, median seconds per call within a turn): backend -> batch size -> one value per round.

    Round-robin rather than one backend after the other: on a shared or virtual CPU a slow spell then hits
    every backend alike, and the ratio of two backends within one round stays fair.
    """
    batches = {size: batch_of(images, size) for size in batch_sizes}
    result: dict[str, dict[int, list[float]]] = {name: {size: [] for size in batch_sizes} for name in classifiers}
    for _ in range(rounds):
        for name, classifier in classifiers.items():
            for size, batch in batches.items():
                if classifier.fixed_batch and size != classifier.fixed_batch:  # a fixed-batch graph loops inside
                    call = functools.partial(classifier.logits, batch, size)
                else:
                    call = functools.partial(classifier.run, batch)
                call()  # warm: the first call of a turn may reallocate
                result[name][size].append(size / float(np.median(timed_calls(call, seconds / rounds, min_calls=3))))
    return result


def bench_backends(
    classifiers: dict[str, Classifier],
    images: np.ndarray,
    labels: np.ndarray,
    *,
    batch_sizes: list[int],
    flops_per_image: int,
    peak_gflops: float,
    seconds: float = 2.0,
    rounds: int = 3,
    reference: str = "torch",
) -> list[BackendResult]:
    """Measure every classifier (backend name -> Classifier) on the same test images (N, 3, 32, 32) uint8
    with their labels (N,). Throughput is the median over ``rounds``; ``vs_reference`` the median over rounds
    of its ratio to ``reference`` (the first backend when that one is not measured) at the largest batch size."""
    measured = {
        name: accuracy_and_latency(c, images, labels, batch_size=max(batch_sizes), seconds=seconds / rounds)
        for name, c in classifiers.items()
    }
    speeds = throughput_rounds(classifiers, images, batch_sizes=batch_sizes, seconds=seconds, rounds=rounds)
    big = max(batch_sizes)
    reference = reference if reference in classifiers else next(iter(classifiers))
    results = []
    for name, (accuracy, latencies) in measured.items():
        throughput = {size: float(np.median(values)) for size, values in speeds[name].items()}
        gflops = throughput[big] * flops_per_image / 1e9
        ratios = np.array(speeds[name][big]) / np.array(speeds[reference][big])
        results.append(
            BackendResult(
                backend=name,
                runs_on=classifiers[name].runs_on,
                accuracy=accuracy,
                latency_p50_ms=float(np.percentile(latencies, 50)),
                latency_p99_ms=float(np.percentile(latencies, 99)),
                throughput=throughput,
                throughput_rounds=speeds[name],
                reference=reference,
                vs_reference=float(np.median(ratios)),
                gflops=gflops,
                vs_fp32_matmul=gflops / peak_gflops if peak_gflops else 0.0,
            )
        )
    return results


def parse_list(text: str, kind: type, name: str, allowed: tuple[str, ...] | None = None) -> list:
    """``"1,32,256"`` -> [1, 32, 256]; a clear ConfigError on bad items."""

    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise ConfigError(f"{name} is empty; give a comma-separated list")
    try:
        values = [kind(t) for t in items]
    except ValueError:
        raise ConfigError(f"{name} {text!r} must be a comma-separated list of {kind.__name__}") from None
    if allowed is not None:
        unknown = [v for v in values if v not in allowed]
        if unknown:
            raise ConfigError(f"unknown {name} {unknown[0]!r}; choose from {', '.join(allowed)}")
    if kind is int and any(v < 1 for v in values):
        raise ConfigError(f"{name} must be positive integers, got {text!r}")
    return values


@dataclass
class BenchReport:
    """What ``bench_run`` measured on one model: the setting and a ``BackendResult`` per backend."""

    source: str
    spec: ModelSpec
    threads: int
    device: str  # "cpu", or the GPU's name
    seconds: float  # per backend per batch size, over all rounds
    rounds: int
    batch_sizes: list[int]
    test_images: int
    flops_per_image: int
    peak_gflops: float  # a large fp32 matmul's GFLOP/s on the same threads
    results: list[BackendResult]

    def to_dict(self) -> dict[str, Any]:
        """bench.json's content, with the machine's provenance."""
        return {
            "source": self.source,
            "model": self.spec.name,
            "model_args": self.spec.kwargs,
            "threads": self.threads,
            "device": self.device,
            "seconds_per_measurement": self.seconds,
            "rounds": self.rounds,
            "test_images": self.test_images,
            "flops_per_image": self.flops_per_image,
            "peak_gflops_fp32_matmul": self.peak_gflops,
            "results": [r.to_dict() for r in self.results],
            "provenance": machine_provenance(),
        }


def check_bench_options(backends: list[str], *, seconds: float, rounds: int, threads: int, device: str) -> None:
    """One line for the first bad option, before any work (a backend whose library is missing included)."""
    if any(b.startswith("openvino") for b in backends):
        import_openvino()
    if seconds <= 0:
        raise ConfigError(f"--seconds must be positive, got {seconds}")
    if rounds < 1:
        raise ConfigError(f"--rounds must be 1 or more, got {rounds}")
    if threads < 0:
        raise ConfigError(f"--threads must be 0 (default) or more, got {threads}")
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"--device must be cpu or cuda, got {device!r}")
    resolve_device(device)  # no GPU visible: one line


def bench_run(
    source: str | Path,
    backends: list[str],
    *,
    batch_sizes: list[int],
    threads: int = 0,
    seconds: float = 2.0,
    rounds: int = 3,
    test_images: int = 0,
    data_dir: str | Path | None = None,
    device: str = "cpu",
    log: Callable[[str], None] = lambda _: None,
) -> BenchReport:
    """Measure ``backends`` of the run directory or weights file ``source`` on the same test images
    (``test_images`` of them, 0: the whole split) and threads (0: torch's default), exporting the ONNX graphs
    they need first. ``log`` gets a line for each step."""
    source = Path(source)
    check_bench_options(backends, seconds=seconds, rounds=rounds, threads=threads, device=device)
    if source.suffix == ".onnx":
        raise ConfigError("bench compares against PyTorch; pass the run directory or .safetensors, not the .onnx")
    if threads:
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    model, spec = load_torch(source)  # a missing or unreadable source: one line, before the data is read
    data = load_eval_images(source, data_dir, test_images=test_images)
    graphs = {b: exported_graph(source, b) for b in backends if b not in TORCH_BACKENDS}
    if any(not graph.is_file() for graph in graphs.values()):
        int8 = any(b.endswith("-int8") for b in graphs)
        onnx_path = default_onnx_path(source)
        log(f"exporting {onnx_path} first (cifarlens export{' --quantize int8' * int8})")
        export_run(source, data, out=onnx_path, quantize="int8" if int8 else "none")
    flops = model_flops(model, spec)
    peak = matmul_peak_gflops(device=device)
    log(
        f"{spec.name}: {flops / 1e6:.1f} MFLOP/image; {threads} threads; fp32 matmul {peak:.0f} GFLOP/s; "
        f"{len(data.test_labels)} test images"
    )
    classifiers = {
        name: graph_backend(graphs[name], name, threads=threads, device=device)
        if name in graphs
        else torch_backend(model, spec, source, name, device=device)
        for name in backends
    }
    log(f"measuring {', '.join(backends)} in {rounds} round-robin rounds ...")
    results = bench_backends(
        classifiers,
        data.test_images,
        data.test_labels,
        batch_sizes=batch_sizes,
        flops_per_image=flops,
        peak_gflops=peak,
        seconds=seconds,
        rounds=rounds,
    )
    where = "cpu" if device == "cpu" else torch.cuda.get_device_name()
    return BenchReport(
        str(source), spec, threads, where, seconds, rounds, batch_sizes, len(data.test_labels), flops, peak, results
    )
