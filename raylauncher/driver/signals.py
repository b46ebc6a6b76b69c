"""SIGTERM/SIGINT, recorded and acted on at safe points."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from raylauncher.errors import RayLauncherError

log = logging.getLogger(__name__)


class DriverTerminated(RayLauncherError):
    """SIGTERM/SIGINT arrived; raised at the next safe point, never from the signal handler."""


class SignalGuard:
    """Records the first SIGTERM/SIGINT. The handler never raises: the driver looks at `fired`
    at safe points (polling loops, launcher waits), so a signal can never cut teardown short."""

    def __init__(self) -> None:
        self.fired: str | None = None

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.fired is None:
            self.fired = signal.Signals(signum).name
            log.warning("received %s: stopping the job and tearing the cluster down", self.fired)

    @contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield  # signals are only delivered to the main thread anyway
            return
        previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)
