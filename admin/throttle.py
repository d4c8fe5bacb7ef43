"""The dashboard's sign-in throttle: a fixed window of failed attempts per client address.

An admin key is 256 bits, so guessing one is hopeless anyway; the throttle keeps
a guesser from loading auth and from filling the logs. It is per process (each
admin replica counts its own) and keyed by the peer address: behind a proxy
that is the proxy's, unless uvicorn is told to trust its X-Forwarded-For.
Only failures count, so an operator who signs in often is never refused.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

# The most client addresses tracked at once; past it, windows that ended are dropped.
_MAX_TRACKED = 10_000


@dataclass(slots=True)
class _Window:
    start: float
    failures: int


class SigninThrottle:
    def __init__(self, attempts: int, window_s: float) -> None:
        self.attempts = attempts
        self.window_s = window_s
        self._windows: dict[str, _Window] = {}

    def retry_after(self, client: str, now: float | None = None) -> int:
        """Seconds until `client` may try again; 0 when it may try now."""
        moment = time.monotonic() if now is None else now
        window = self._windows.get(client)
        if window is None or moment - window.start >= self.window_s:
            return 0
        if window.failures < self.attempts:
            return 0
        return max(1, math.ceil(window.start + self.window_s - moment))

    def failed(self, client: str, now: float | None = None) -> None:
        """Count one failed sign-in by `client`."""
        moment = time.monotonic() if now is None else now
        window = self._windows.get(client)
        if window is None or moment - window.start >= self.window_s:
            if len(self._windows) >= _MAX_TRACKED:
                self._forget_ended(moment)
            self._windows[client] = _Window(moment, 1)
        else:
            window.failures += 1

    def _forget_ended(self, moment: float) -> None:
        ended = [c for c, w in self._windows.items() if moment - w.start >= self.window_s]
        for client in ended:
            del self._windows[client]
        if len(self._windows) >= _MAX_TRACKED:  # all live: forget the oldest half
            oldest = sorted(self._windows, key=lambda c: self._windows[c].start)
            for client in oldest[: len(oldest) // 2]:
                del self._windows[client]
