"""SIGTERM/SIGINT handling: record the request, let the loop checkpoint and exit at a step boundary."""

from __future__ import annotations

import signal
import threading
from types import FrameType


class StopRequest:
    """Installs handlers for SIGTERM and SIGINT that set a flag; `restore()` puts the old ones back."""

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> None:
        self._signals = signals
        self._previous: dict[int, object] = {}
        self.signum: int | None = None

    def install(self) -> StopRequest:
        if threading.current_thread() is not threading.main_thread():
            return self  # handlers can only be set from the main thread
        for sig in self._signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C aborts immediately
        self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def __enter__(self) -> StopRequest:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.restore()
