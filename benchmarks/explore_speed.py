"""How fast ``cifarlens explore`` answers its Image page: per attribution method, the seconds from request to
JSON for one test image (top-5, the overlay, the feature maps), through the real server over HTTP.

    CIFARLENS_DATA_DIR=../shared/data/cifar10 python benchmarks/explore_speed.py --run runs/fast \
        --methods saliency,input-x-gradient,integrated-gradients,gradcam,layercam --images 20 --out results.json

Each method is asked alone for ``--images`` images (after one warm-up request), then all of them together;
the median and the slowest answer are reported. The machine's CPU and load are recorded beside the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(run: str, port: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "cifarlens.cli", "explore", run, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/info", timeout=5).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("explore did not start within 10 minutes")


def timed(url: str) -> float:
    t0 = time.perf_counter()
    response = httpx.get(url, timeout=120)
    response.raise_for_status()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--methods", default="saliency,input-x-gradient,integrated-gradients,gradcam,layercam")
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    methods = args.methods.split(",")
    port = free_port()
    proc = start(args.run, port)
    base = f"http://127.0.0.1:{port}/api/runs/0/images"
    rows = []
    try:
        for chosen in [[m] for m in methods] + [methods]:
            query = ",".join(chosen)
            timed(f"{base}/0?methods={query}")  # warm-up: the library's first call
            seconds = [timed(f"{base}/{i}?methods={query}") for i in range(1, args.images + 1)]
            rows.append({"methods": query, "median_s": statistics.median(seconds), "max_s": max(seconds)})
            print(f"{query:70s} median {rows[-1]['median_s']:.3f} s  max {rows[-1]['max_s']:.3f} s", flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    from cifarlens.device import cpu_name

    result = {
        "run": args.run,
        "images": args.images,
        "cpu": cpu_name(),
        "load_average": os.getloadavg(),
        "python": platform.python_version(),
        "rows": rows,
    }
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
