"""``cifarlens explore RUN [RUN2]``: look at a trained model in the browser (``cifarlens.explore.app``).

Registered in ``cifarlens.cli``; FastAPI and uvicorn load inside the command.
"""

from __future__ import annotations

import errno
import socket
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from cifarlens.console import console, err_console, user_errors
from cifarlens.errors import ConfigError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def check_port_free(host: str, port: int) -> None:
    """A ``ConfigError`` naming the fix when ``host:port`` cannot be listened on (in use, or no such address)."""
    if not 0 < port < 65536:
        raise ConfigError(f"--port must be 1..65535, got {port}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no conflict
        try:
            probe.bind((host, port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"port {port} on {host} is in use; pass another --port or stop what listens there"
                ) from None
            raise ConfigError(f"cannot listen on {host}:{port} ({err.strerror}); pass another --host") from None


@user_errors
def explore(
    runs: Annotated[list[Path], typer.Argument(help="run directory, or two to compare")],
    host: Annotated[str, typer.Option(help="address to listen on (127.0.0.1: this machine only)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8050,
    split: Annotated[str, typer.Option(help="the images to explore: test, val or train")] = "test",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps")] = "cpu",
    data_dir: Annotated[
        str | None, typer.Option(help="folder holding cifar-10-batches-py (default: the run's)")
    ] = None,
    max_bytes: Annotated[int, typer.Option(help="largest accepted upload in bytes")] = 10 * 1024 * 1024,
    max_pixels: Annotated[
        int, typer.Option(help="larger uploaded images are refused (decompression-bomb guard)")
    ] = 89_478_485,
) -> None:
    """Browse a trained model: overview, confusion cells, the feature map, attributions and channels of any image."""
    from cifarlens.data.image_files import set_pillow_pixel_limit
    from cifarlens.explore.app import serve
    from cifarlens.explore.explorer import Explorer

    if max_bytes < 1 or max_pixels < 1:
        raise ConfigError("--max-bytes and --max-pixels must be at least 1")
    check_port_free(host, port)
    set_pillow_pixel_limit(max_pixels)
    explorer = Explorer(runs, split=split, data_dir=data_dir, device=device)
    for r in range(len(runs)):
        console.print(escape(f"scoring {len(explorer.labels):,} {split} images with {runs[r]} (cached in the run) ..."))
        explorer.probabilities(r)
    if host not in LOOPBACK:
        err_console.print(
            f"[yellow]warning:[/] listening on {escape(host)}: other machines can reach this explorer", highlight=False
        )
    shown = f"[{host}]" if ":" in host else host
    console.print(f"explore {escape(' vs '.join(map(str, runs)))} at http://{shown}:{port}/ (Ctrl+C stops)")
    serve(explorer, host, port, max_bytes=max_bytes, max_pixels=max_pixels)
