"""Stopping a run cleanly: SIGTERM (what schedulers and ``docker stop`` send) or a first Ctrl-C ask the loop
to stop after the current step, write a recovery checkpoint and exit non-zero with how to resume."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator


class StopRequest:
    """Set by a signal; the training loop checks it after every step. ``bool(stop)``: a stop was asked for."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def __bool__(self) -> bool:
        return self.signal is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signal).name if self.signal else ""

    @property
    def exit_code(self) -> int:
        return 128 + (self.signal or 0)  # the shell's convention: 143 for SIGTERM, 130 for SIGINT


@contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Catch SIGTERM and SIGINT into a ``StopRequest`` while the block runs (main thread only: Python
    delivers signals there). A second Ctrl-C interrupts at once, as usual."""
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum, _frame) -> None:
        stop.signal = signum
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
